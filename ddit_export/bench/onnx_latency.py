"""Per-size latency of an engine folder's ONNX graphs on ONNX Runtime, measured side by side.

Sizes are timed round-robin (one call of each size per round) after warm-up, so machine drift
hits every size alike and the ratios between sizes are fair. The base size is the reference.
Raw ORT sessions on numpy feeds (no torch in the loop); `latency.py` times every backend through
the runtime and is what `ddit-export bench` uses. Both share the summaries of `timing.py`.
"""

from __future__ import annotations

from pathlib import Path

from ..export.iospec import IOSpec, random_feed
from ..export.manifest import engine_entries, read_manifest, verify_entry
from .timing import Stopwatch, rotated, summarize


def onnx_latency(folder, warmup: int = 3, iters: int = 10, providers=("CPUExecutionProvider",)) -> dict:
    import onnxruntime as ort

    folder = Path(folder)
    manifest = read_manifest(folder)
    spec = IOSpec.from_json(manifest["io"])
    feed = random_feed(spec, seed=0)
    sessions = {}
    for patch, entry in sorted(engine_entries(manifest, "onnx").items()):
        verify_entry(folder, entry)
        sessions[patch] = ort.InferenceSession(str(folder / entry["files"][0]), providers=list(providers))
    for _ in range(warmup):
        for session in sessions.values():
            session.run(None, feed)
    samples = {p: [] for p in sessions}
    watch = Stopwatch("cpu")  # numpy feeds: ORT returns when the outputs are on the host
    for r in range(iters):
        for patch in rotated(list(sessions), r):
            watch.start()
            sessions[patch].run(None, feed)
            samples[patch].append(watch.stop())
    base = manifest["base_patch"]
    tokens = {e["patch_size"]: e["tokens"] for e in manifest["engines"]}
    result = {p: {**summarize(s), "tokens": tokens[p]} for p, s in samples.items()}
    for r in result.values():
        r["speedup_vs_base"] = result[base]["mean_ms"] / r["mean_ms"]
    return {"folder": str(folder), "providers": list(providers), "sizes": result,
            "latent_shape": manifest["latent_shape"], "text_len": manifest["request"]["text_len"]}
