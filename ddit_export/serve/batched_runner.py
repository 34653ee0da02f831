"""Run several DDiT requests in lock-step, each with its own scheduler, grouping engine calls by patch size.

    runner = BatchedRunner([get_backend("onnx", "engines/demo"), get_backend("onnx", "engines/demo.batch8")])
    results = runner.run([Job(conditioning, schedule_config(runner.solo), steps=28, seed=s) for s in seeds])
    results[0].latent, results[0].trace.schedule

Every request keeps its own `DDiTRunner` (its scheduler ring, its trace), its own sampler and its own
noise, from the set-up `generate` starts from (the pipeline's `lock_step_sampling`: `pipelines/flux.py`'s
`flux_sampling`). Each step, every active request decides its patch
size from its own latent; the requests that chose the same size share calls of that size's engine
(rows stacked along the batch, padded with copies of a real row up to a loaded batch; how a group is
split is chosen from each engine's measured call time, `calibrate`); then each request takes its own
sampler step. Nothing of one request
reaches another's scheduler, so a request's schedule and latent are the ones a solo run gives
whenever the engine's rows do not depend on each other (bitwise on the demo's ONNX engines,
docs/serving.md; the tests check it).

Engines with a batch dimension are ordinary engine folders exported with `--batch B`
(`batch_engines.batch_variant`); the batch-1 folder is required: it fixes the per-request shapes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..pipelines.registry import pipeline_for
from ..runtime.backends.base import Backend
from ..runtime.cache.spec import CacheSpec
from ..runtime.cache.step_cache import StepCache
from ..runtime.conditioning import Conditioning
from ..runtime.runner import DDiTRunner
from ..runtime.scheduler import ScheduleConfig
from ..runtime.trace import Trace


@dataclass
class Job:
    """One request: what `pipelines.generate` takes, for a batch-1 engine folder.

    ``cache``: step caching (`runtime.cache.CacheSpec`, staged folders only), as `generate --cache`; the request
    gets its own `StepCache`, so its cached steps are the ones a solo run caches.
    ``loras``: user LoRAs (`runtime.loras.LoraSpec`s, staged folders only), as `generate --lora`; requests with
    other LoRAs never share its engine calls."""

    conditioning: Conditioning
    config: ScheduleConfig
    steps: int
    seed: int
    cache: CacheSpec | None = None
    bucket: str = ""  # the resolution bucket whose loop runs it (serve: one loop per bucket)
    loras: tuple = ()


@dataclass
class JobResult:
    latent: torch.Tensor  # 1 x C x h x w, the final sampler latent
    trace: Trace
    batch_sizes: list[int] = field(default_factory=list)  # per step: requests in this request's engine call
    seconds: float = 0.0  # from joining the lock-step loop to finishing


def engine_batch(backend: Backend) -> int:
    return int(backend.latent_shape[0])


def lock_step_sampling(solo: Backend):
    """The pipeline's per-request sampler set-up, or one line saying these engines cannot be served in lock-step."""
    sampling = pipeline_for(solo.manifest).lock_step_sampling
    if sampling is None:
        raise ValueError(f"batched serving runs FLUX-family engines; {solo.folder} holds "
                         f"{solo.manifest.get('family')} engines")
    return sampling


class ActiveRequest:
    """Per-request loop state (what `generate` keeps in locals)."""

    def __init__(self, job: Job, solo: Backend, admitted: float, sampling=None):
        self.job = job
        setup = (sampling or lock_step_sampling(solo))(solo, job.steps, job.seed)  # refuses bad steps
        self.latent, self.sampler, self.timesteps = setup.latent, setup.sampler, setup.timesteps
        self.engine_timesteps, self.sigmas = setup.engine_timesteps, setup.sigmas
        self.inputs = job.conditioning.engine_inputs(solo.io_spec, solo.device, solo.dtype)
        # a request's step cache holds its own residuals and signal: never shared, never batched
        cache = StepCache(solo, job.cache) if job.cache is not None else None
        self.runner = DDiTRunner(solo, job.config, total_steps=job.steps, cache=cache)
        self.step = 0
        self.batch_sizes: list[int] = []
        self.admitted = admitted

    def advance(self, prediction: torch.Tensor, shared_by: int) -> None:
        """The sampler step with this step's prediction (from a call `shared_by` requests shared)."""
        t = self.timesteps[self.step]
        self.latent = self.sampler.step(prediction, t, self.latent, return_dict=False)[0]
        self.batch_sizes.append(shared_by)
        self.step += 1

    @property
    def done(self) -> bool:
        return self.step >= self.job.steps


class BatchedRunner:
    """Lock-step DDiT sampling of many requests on engines of one model at several batch sizes."""

    def __init__(self, backends: Sequence[Backend]):
        by_batch = {engine_batch(b): b for b in backends}
        if 1 not in by_batch:
            raise ValueError("BatchedRunner needs the batch-1 engines (they fix each request's shapes); "
                             f"got batches {sorted(by_batch)}")
        self.solo = by_batch[1]
        self.sampling = lock_step_sampling(self.solo)
        for batch, b in by_batch.items():
            if tuple(b.latent_shape[1:]) != tuple(self.solo.latent_shape[1:]) or b.dtype != self.solo.dtype:
                raise ValueError(f"{b.folder} (batch {batch}) has latent {b.latent_shape} {b.dtype}; the batch-1 "
                                 f"engines have {self.solo.latent_shape} {self.solo.dtype}: export both from one model")
            missing = set(self.solo.patch_sizes) - set(b.patch_sizes)
            if missing:
                raise ValueError(f"{b.folder} (batch {batch}) lacks patch sizes {sorted(missing)}")
        self.backends = dict(sorted(by_batch.items()))
        self.max_batch = max(self.backends)
        self.call_seconds: dict[tuple[int, int], float] = {}  # (batch, patch) -> seconds per call (`calibrate`)

    def calibrate(self, repeats: int = 5) -> dict[tuple[int, int], float]:
        """Time one call of every (batch, patch) engine (fastest of `repeats` after a warm call), so `call_batch`
        picks the cheapest way to run a group. Measured on the demo's ONNX engines on a 2-core CPU, a batch-8 call
        cost less than 8 batch-1 calls at p8 and more at p2 and p4 (docs/serving.md)."""
        for batch, backend in self.backends.items():
            feeds = {t.name: torch.zeros(t.shape, dtype=backend.dtype, device=backend.device)
                     for t in backend.io_spec.inputs}
            latent = feeds.pop("latent")
            for patch in self.solo.patch_sizes:
                times = []
                for _ in range(repeats + 1):
                    start = time.perf_counter()
                    backend(patch, latent, **feeds).cpu()  # .cpu(): the call has finished on any device
                    times.append(time.perf_counter() - start)
                # the fastest: on a shared machine a call is only ever slowed down by others (seen: 195 ms for a
                # 3 ms call while a restarted replica loaded), and a slow outlier here would last the replica's life
                self.call_seconds[(batch, patch)] = min(times[1:])
        return dict(self.call_seconds)

    def call_batch(self, n: int, patch: int | None = None) -> int:
        """Requests per engine call for a group of `n` at `patch`: with `calibrate`d times, the loaded batch whose
        calls take least in total (`ceil(n / b) * t(b)`, ties to the larger batch); else the smallest loaded batch
        that holds the group. Rows are bitwise identical at every batch, so the choice never changes a result."""
        if patch is not None and self.call_seconds:
            best = min(self.backends, key=lambda b: (-(-n // b) * self.call_seconds[(b, patch)], -b))
            return min(best, n) if best > 1 else 1
        return min((b for b in self.backends if b >= n), default=self.max_batch)

    @property
    def batches(self) -> tuple[int, ...]:
        return tuple(self.backends)

    def call_ms(self) -> dict[str, float]:
        """`calibrate`d call times, "b8p2" -> ms (for /healthz and reports)."""
        return {f"b{b}p{p}": round(1000 * t, 3) for (b, p), t in self.call_seconds.items()}

    def cpu_threading(self) -> dict[str, str]:
        """Each engine's ONNX Runtime CPU threading mode, "b8p2" -> mode (empty for other backends)."""
        return {f"b{b}p{p}": mode for b, backend in self.backends.items()
                for p, mode in getattr(backend, "cpu_threading", {}).items()}

    def run(self, jobs: Sequence[Job]) -> list[JobResult | Exception]:
        """Sample every job in lock-step; a job that cannot start (bad steps, ...) gets its exception in its slot."""
        start = time.perf_counter()
        results: list[JobResult | Exception | None] = [None] * len(jobs)
        active: dict[int, ActiveRequest] = {}
        for i, job in enumerate(jobs):
            try:
                active[i] = ActiveRequest(job, self.solo, start, self.sampling)
            except Exception as err:  # handed back to that request alone
                results[i] = err
        while active:
            for i, result in self.step(active).items():
                results[i] = result
        return results  # type: ignore[return-value]

    def use_loras(self, loras: tuple) -> None:
        """Every loaded engine runs with exactly these LoRAs (a no-op when they already do)."""
        for backend in self.backends.values():
            backend.set_loras(loras)

    @property
    def loras(self) -> tuple:
        return tuple(self.solo.loras)

    def step(self, active: dict) -> dict:
        """One denoising step of every request in `active` (key -> `ActiveRequest`): each decides its own patch size,
        each (LoRA set, size)'s requests share engine calls. Finished requests leave `active`; returns key ->
        JobResult. Requests of one LoRA set run together, the engines' current set first (fewest swaps)."""
        groups: dict[tuple, dict[int, list]] = {}
        for key, state in active.items():
            decision = state.runner.decide(state.latent, state.step, state.sigmas[state.step])
            groups.setdefault(tuple(state.job.loras), {}).setdefault(decision.patch_size, []).append(key)
        current = self.loras
        for loras in sorted(groups, key=lambda s: s != current):
            self.use_loras(loras)
            for patch, members in groups[loras].items():
                alone = [k for k in members if active[k].runner.cache is not None]
                for key in alone:  # its cache decides whether the trunk runs: a call of its own
                    self._run_alone(active[key])
                members = [k for k in members if k not in alone]
                size = self.call_batch(len(members), patch) if members else 1
                for lo in range(0, len(members), size):
                    self._run_group(patch, [active[k] for k in members[lo:lo + size]])
        done = {}
        for key in [k for k, s in active.items() if s.done]:
            state = active.pop(key)
            done[key] = JobResult(state.latent, state.runner.finish(), state.batch_sizes,
                                  time.perf_counter() - state.admitted)
        return done

    def _run_alone(self, state: ActiveRequest) -> None:
        """One request's step through its runner (and so its step cache), then its sampler step."""
        pred = state.runner.run(state.latent, timestep=state.engine_timesteps[state.step], **state.inputs)
        state.advance(pred, 1)

    def _run_group(self, patch: int, group: list[ActiveRequest]) -> None:
        """One engine call for every request of the group, then each request's own sampler step."""
        n = len(group)
        batch = min((b for b in self.backends if b >= n), default=self.max_batch)
        backend = self.backends[batch]
        rows = group + [group[0]] * (batch - n)  # padding: copies of a real row, so no NaN or overflow

        def stack(get):
            return torch.cat([get(s) for s in rows]) if batch > 1 else get(rows[0])

        latent = stack(lambda s: s.latent)
        timestep = stack(lambda s: s.engine_timesteps[s.step])
        inputs = {name: stack(lambda s, name=name: s.inputs[name]) for name in group[0].inputs}
        clock = group[0].runner.clock
        begin = clock.mark()
        out = backend(patch, latent, timestep=timestep, **inputs)
        end = clock.mark()
        for j, state in enumerate(group):
            state.runner.trace.add_engine_call(begin, end)
            state.advance(out[j:j + 1], n)
