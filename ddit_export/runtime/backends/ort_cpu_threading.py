"""ONNX Runtime CPU threading, chosen per engine by timing it when the backend loads.

Why per engine: DDiT's engines differ in size by up to 16x in tokens, and on small graphs ORT's
intra-op thread pool costs more than it gives. Measured on the demo's engines (2-core machine,
2026-12-02, ms per call, best of 5 x 200):

    engine   pool (ORT's threads, no spinning)   pool + spinning   one thread
    p2       3.80                                 2.91              3.69
    p4       1.52                                 1.10              1.15
    p8       0.87                                 0.63              0.64

and end to end (28 steps, ms per image, base / DDiT with p4 after 3 base steps): pool for every engine
114 / 62; spinning for every engine 91 / 60; p2 spinning and p4 on one thread 91 / 51. Two spinning pools
slow each other down (p4 alone ran 38 ms spinning, 39.5 on one thread), so spinning is allowed on one
engine: the one whose step it shortens most. So the base and the coarse engines each run in the mode
that is fastest for them, and a speed-up is never bought by slowing the base down.

Only engines whose first call is short are tuned (`TUNE_BELOW_SECONDS`): on large graphs the modes
barely differ and timing them would cost seconds at load. Those keep `pool` after that one call.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ..scheduler import block_statistics

MODES = ("pool", "pool+spin", "single")
TUNE_BELOW_SECONDS = 0.05  # a call slower than this is compute-bound: threading overhead is noise
WARM_CALLS = 3
TIMED_CALLS = 7


def session_options(mode: str):
    """`SessionOptions` for one CPU threading mode."""
    import onnxruntime as ort

    if mode not in MODES:
        raise ValueError(f"unknown ONNX Runtime CPU threading mode {mode!r}: use one of {', '.join(MODES)} or auto")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: node placement notes are not the user's concern
    if mode == "single":
        options.intra_op_num_threads = 1
    # ORT's workers spin after each call by default; off unless asked, so idle workers do not starve
    # whatever runs next on the same cores (the scheduler, the sampler, another backend in a benchmark).
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if mode == "pool+spin" else "0")
    return options


def host_work(latent: torch.Tensor, prediction: np.ndarray) -> None:
    """What the runtime does on the host between two engine calls: the statistic and the sampler update,
    so a mode is judged on a step (spinning workers compete with this work), not on a bare call."""
    block_statistics(latent, (latent.shape[-1],), 0.4).tolist()
    latent.add_(torch.from_numpy(np.asarray(prediction, np.float32)).reshape(latent.shape), alpha=-1e-3)


def best_step_seconds(session, feeds: dict, latent_name: str, calls: int = TIMED_CALLS) -> float:
    """Best time of one engine call plus the host work that follows it."""
    latent = torch.from_numpy(np.array(feeds[latent_name], np.float32))  # a copy, in float32
    best = float("inf")
    for i in range(WARM_CALLS + calls):
        start = time.perf_counter()
        (prediction,) = session.run(None, feeds)
        host_work(latent, prediction)
        if i >= WARM_CALLS:
            best = min(best, time.perf_counter() - start)
    return best


def timed_modes(make, pool, feeds: dict, latent_name: str) -> tuple[dict, dict[str, float]]:
    """Every mode's session for one engine and its best step time; only `pool` where tuning does not pay."""
    sessions = {"pool": pool}
    try:
        start = time.perf_counter()
        pool.run(None, feeds)  # one call decides whether tuning pays: a large graph costs seconds per call
        first = time.perf_counter() - start
    except Exception:  # e.g. a bf16 graph CPU kernels lack: the calls report it, not the load
        return sessions, {}
    if first >= TUNE_BELOW_SECONDS:
        return sessions, {"pool": first}
    timings = {"pool": best_step_seconds(pool, feeds, latent_name)}
    for mode in MODES[1:]:
        sessions[mode] = make(mode)
        timings[mode] = best_step_seconds(sessions[mode], feeds, latent_name)
    return sessions, timings


def choose_modes(timings: dict[int, dict[str, float]]) -> dict[int, str]:
    """Each engine's fastest mode, with spinning allowed on one engine only: the one it helps most.

    Two spinning pools slow each other down (see above), so the others take their best non-spinning mode.
    """
    calm = {p: min((m for m in t if m != "pool+spin"), key=t.get) if t else "pool" for p, t in timings.items()}
    gains = {p: t[calm[p]] - t["pool+spin"] for p, t in timings.items() if "pool+spin" in t}
    spinner = max(gains, key=gains.get) if gains and max(gains.values()) > 0 else None
    return {p: "pool+spin" if p == spinner else calm[p] for p in timings}


def tuned_sessions(paths: dict[int, str], providers: list, feeds: dict, latent_name: str, mode: str = "auto",
                   check=None):
    """({patch: session}, {patch: mode}, {patch: {mode: best seconds per step}}) for engine files on the CPU.

    `check(patch, session)` runs on each engine's first session before anything is timed (a signature check).
    """
    import onnxruntime as ort

    sessions, modes, timings = {}, {}, {}
    for patch, path in sorted(paths.items()):
        def make(m, path=path):
            return ort.InferenceSession(path, session_options(m), providers=providers)

        first = make("pool" if mode == "auto" else mode)
        if check:
            check(patch, first)
        if mode == "auto":
            sessions[patch], timings[patch] = timed_modes(make, first, feeds, latent_name)
        else:
            sessions[patch], modes[patch], timings[patch] = first, mode, {}
    if mode == "auto":
        modes = choose_modes(timings)
        sessions = {p: candidates[modes[p]] for p, candidates in sessions.items()}  # the others are released
    return sessions, modes, timings
