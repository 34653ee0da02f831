"""The Ray Serve application: one `DDiTServer` replica per GPU (or CPU slot), each loading its engines once,
behind the `DDiTIngress` (serve/ingress.py: HTTP routes, retries on a live replica, draining).

    POST /v1/generate   JSON (serve/requests.py) -> image/png or application/x-npy; the schedule and
                        timings in the `X-DDiT-Trace` header (JSON); 4xx JSON for bad requests
    GET  /healthz       JSON: engines, batches, replica pid, requests served; 503 while draining

Batching: `@serve.batch` collects the requests that arrive within `--batch-wait-ms` (at most
`--max-batch`) and they join the replica's sampling loop together (`ContinuousBatcher`, one thread,
so the replica keeps answering its handle calls); `BatchedRunner.step` advances every active request, each with
its own scheduler, one engine call per patch size per step. Requests of a later window join at the
next step, up to `--max-batch` sampling at once.

`build_app(args)` is the application builder `serve run` / `serve deploy` import (serve/config.py).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import time
from collections import OrderedDict
from pathlib import Path

from ray import serve

from .continuous import ContinuousBatcher
from .ingress import Answer, DDiTIngress
from .requests import DRAIN_TIMEOUT_S, GenerateRequest, RequestError, parse_body

DEFAULT_STEPS = 28
CONDITIONING_CACHE = 256  # prompts whose embeddings a replica keeps
DRAIN_POLL_S = 0.5  # a stopping replica looks for requests still running this often (Ray's default: 2 s)


@serve.deployment(name="DDiTServer", max_ongoing_requests=16)
class DDiTServer:
    def __init__(self, engine_dir: str, backend: str = "onnx", batch_dirs: tuple[str, ...] = (), max_batch: int = 1,
                 batch_wait_ms: float = 10.0, embeds_dir: str | None = None, default_steps: int = DEFAULT_STEPS,
                 default_cache: str | None = None, lora_dir: str | None = None):
        import torch

        from ..runtime.backends import get_backend
        from .batched_runner import BatchedRunner

        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        folders = [engine_dir, *batch_dirs]
        options = replica_backend_options(backend, self.device)
        from ..artifacts.manifest import read_manifest

        # Per resolution bucket: its engines (the staged ONNX Runtime ones share one trunk), a runner and a
        # lock-step loop, so requests batch per (bucket, patch size).
        self.buckets = read_manifest(engine_dir).buckets
        self.runners = {}
        for b in self.buckets:
            backends = [get_backend(backend, folder, device=self.device, bucket=(b.height, b.width), **options)
                        for folder in folders]
            self.runners[b.name] = BatchedRunner(backends)
            if len(backends) > 1:
                self.runners[b.name].calibrate()  # how to split each size's group: measured on this replica
        self.runner = self.runners[self.buckets[0].name]  # the default bucket
        self.backends = self.runner.backends
        self.solo = self.runner.solo
        self.manifest = self.solo.manifest
        from ..pipelines import pipeline_for

        self._pipeline = pipeline_for(self.manifest)
        self._decoder = self._pipeline.image_decoder(self.manifest, self.device)
        self.sizes = tuple(self.solo.patch_sizes)
        self.embeds_dir = Path(embeds_dir) if embeds_dir else None
        self.lora_dir = Path(lora_dir) if lora_dir else None
        self.default_steps = default_steps
        from ..runtime.cache.spec import parse_cache

        self.default_cache = parse_cache(default_cache)  # a request that names no "cache" gets this
        self.usable_caches: set = set()  # CacheSpecs these engines were shown to run (one StepCache built each)
        if self.default_cache is not None:
            self.cache_spec(self.default_cache)
        self.max_batch = max_batch
        self.generate_batch.set_max_batch_size(max_batch)
        self.generate_batch.set_batch_wait_timeout_s(batch_wait_ms / 1000)
        self.batchers = {name: ContinuousBatcher(runner, max_active=max_batch) for name, runner in self.runners.items()}
        self.batcher = self.batchers[self.buckets[0].name]
        self.conditionings: OrderedDict = OrderedDict()
        self.served = 0
        self.in_flight = 0  # requests inside generate_batch (queued for a batch or sampling)
        self.tokens_of = {b.name: {p: _tokens(b.latent_shape, p) for p in self.sizes} for b in self.buckets}
        self.tokens = self.tokens_of[self.buckets[0].name]
        from .metrics import ServeMetrics

        self.metrics = ServeMetrics()
        from ..pipelines.flux import flux_sampler

        flux_sampler()  # imports diffusers' sampler now, not during the first request

    # -- called by the ingress (serve/ingress.py) through the deployment handle ------------------------
    def health(self) -> dict:
        return {"status": "ok", "pid": os.getpid(), "device": self.device, "engines": str(self.solo.folder),
                "backend": self.solo.name, "patch_sizes": list(self.sizes), "batches": list(self.runner.batches),
                "max_batch": self.max_batch, "served": self.served, "in_flight": self.in_flight,
                "sampling": sum(b.active for b in self.batchers.values()),
                "resolutions": [b.name for b in self.buckets], "loras": [s.name for s in self.runner.loras],
                "call_ms": self.runner.call_ms(), "ort_cpu_threading": self.runner.cpu_threading()}

    async def generate(self, raw: bytes) -> Answer:
        """One `POST /v1/generate` body -> its answer: the image or latent, or one JSON error line."""
        start = time.perf_counter()
        try:
            req = parse_body(raw, self.sizes, self.default_steps)
            job = self.job(req)
        except RequestError as err:
            return self._refuse(err)
        except ValueError as err:  # the library's own checks (unknown class, schedule vs sizes, ...)
            return self._refuse(RequestError(str(err), 422))
        self.in_flight += 1
        try:
            result = await self.generate_batch(job)
        finally:
            self.in_flight -= 1
        if isinstance(result, Exception):
            self.metrics.refused("sampling")
            self.metrics.answered(500, time.perf_counter() - start)
            return _error(RequestError(f"sampling failed: {type(result).__name__}: {result}", 500))
        body, media = self.encode(result.latent, req.output, job.bucket)
        self.served += 1
        schedule = result.trace.schedule
        self.metrics.sampled(schedule, self.tokens_of[job.bucket], self.solo.base_patch)
        self.metrics.batch.observe(max(result.batch_sizes))
        self.metrics.answered(200, time.perf_counter() - start)
        trace = self.trace_header(req, job, result, time.perf_counter() - start)
        return Answer(200, body, media, {"X-DDiT-Trace": json.dumps(trace, separators=(",", ":"))})

    def _refuse(self, err: RequestError) -> Answer:
        self.metrics.refused(f"http_{err.status}")
        self.metrics.answered(err.status)
        return _error(err)

    # -- requests -> jobs -> responses ----------------------------------------------------------------
    def job(self, req: GenerateRequest):
        from ..runtime.runner import schedule_config
        from .batched_runner import Job

        if req.output == "png" and not self._can_png():
            raise RequestError("these engines' model has no VAE (nor the demo's pixel codec): ask for "
                               "\"output\": \"latent\"", 422)
        from ..artifacts.manifest import BucketError

        try:
            bucket = self.manifest.find_bucket(req.height, req.width).name
        except BucketError as err:
            raise RequestError(str(err), 422) from None
        solo = self.runners[bucket].solo  # its manifest holds the bucket's scheduler defaults
        config = schedule_config(solo, tau=req.tau, rho=req.rho, patch_sizes=req.sizes, schedule=req.schedule)
        cache = self.default_cache if req.cache is None else self.cache_spec(req.cache)
        return Job(self.conditioning(req), config, steps=req.steps, seed=req.seed, cache=cache,
                   bucket=bucket, loras=self.lora_specs(req.loras))

    def lora_specs(self, loras) -> tuple:
        """The request's `(name, scale)` pairs as LoraSpecs of `--lora-dir` files, each read and checked against
        the engines now (a LoRA that does not fit is a 422 naming it, before the request joins the loop)."""
        if not loras:
            return ()
        from ..runtime.loras import LoraSpec

        if self.lora_dir is None:
            raise RequestError("'loras': this server has no --lora-dir", 422)
        specs = tuple(LoraSpec(self.lora_dir / f"{name}.safetensors", scale) for name, scale in loras)
        for spec in specs:
            if not spec.path.is_file():
                raise RequestError(f"unknown LoRA {spec.name!r}: no {spec.path.name} in the LoRA folder", 422)
        try:
            self.solo.check_loras(specs)
        except ValueError as err:
            raise RequestError(f"'loras': {str(err).replace(str(self.lora_dir) + '/', '')}", 422) from None
        return specs

    def cache_spec(self, cache):
        """The request's `CacheSpec` ("none" -> None), refused in one line where these engines cannot cache
        (a single-layout folder; fbcache without the first-block split)."""
        from ..runtime.cache import StepCache, parse_cache

        spec = parse_cache(cache) if isinstance(cache, str) else cache
        if spec is not None and spec not in self.usable_caches:
            try:
                StepCache(self.solo, spec)  # refuses what these engines cannot run, with the fix
                self.usable_caches.add(spec)
            except ValueError as err:
                raise RequestError(f"'cache' {spec}: {err}", 422) from None
        return spec

    def conditioning(self, req: GenerateRequest):
        key = (req.prompt, req.prompt_embeds_id, req.guidance)
        if key in self.conditionings:
            self.conditionings.move_to_end(key)
            return self.conditionings[key]
        if req.prompt_embeds_id is not None:
            cond = self._stored_embeddings(req.prompt_embeds_id, req.guidance)
        else:
            cond = self._prompt_conditioning(req.prompt, req.guidance)
        self.conditionings[key] = cond
        if len(self.conditionings) > CONDITIONING_CACHE:
            self.conditionings.popitem(last=False)
        return cond

    def _prompt_conditioning(self, prompt: str, guidance):
        try:  # a pipeline that knows only some prompts (the demo: its class names) refuses the others
            prompt = self._pipeline.check_prompt(prompt)
        except ValueError as err:
            raise RequestError(f"unknown prompt: {err}", 422) from None
        return self._pipeline.conditioning(self.manifest, prompt, guidance, self.device)

    def _stored_embeddings(self, embeds_id: str, guidance):
        """`<embeds_dir>/<id>.safetensors` with `encoder_hidden_states` (and `pooled_projections`), batch 1."""
        from safetensors.torch import load_file

        from ..pipelines.flux import DEFAULT_GUIDANCE
        from ..runtime.conditioning import Conditioning

        path = self.embeds_dir / f"{embeds_id}.safetensors" if self.embeds_dir else None
        if path is None or not path.is_file():
            where = "this server has no --embeds-dir" if path is None else f"no {path.name} in the embeddings folder"
            raise RequestError(f"unknown prompt_embeds_id {embeds_id!r}: {where}", 422)
        tensors = load_file(str(path))
        shapes = {t.name: t.shape for t in self.solo.io_spec.inputs}
        for name in ("encoder_hidden_states", "pooled_projections"):
            if name in shapes and (name not in tensors or tuple(tensors[name].shape) != tuple(shapes[name])):
                got = tuple(tensors[name].shape) if name in tensors else "missing"
                raise RequestError(f"prompt_embeds_id {embeds_id!r}: '{name}' is {got}; the engines take "
                                   f"{tuple(shapes[name])}", 422)
        if guidance is None and "guidance" in shapes:
            guidance = DEFAULT_GUIDANCE
        return Conditioning(tensors["encoder_hidden_states"], tensors.get("pooled_projections"), guidance,
                            source=f"stored embeddings {path.name}")

    def _can_png(self) -> bool:
        return self._decoder is not None

    def encode(self, latent, output: str, bucket: str | None = None) -> tuple[bytes, str]:
        buffer = io.BytesIO()
        if output == "latent":
            import numpy as np

            np.save(buffer, latent.float().cpu().numpy())
            return buffer.getvalue(), "application/x-npy"
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:  # the pipeline's own image writer (the demo: its 8x view)
            manifest = self.runners[bucket].solo.manifest if bucket else self.manifest
            written = self._pipeline.write_outputs(manifest, latent, Path(tmp), self.device)
            return next(p for p in written if p.suffix == ".png").read_bytes(), "image/png"

    def trace_header(self, req: GenerateRequest, job, result, seconds: float) -> dict:
        from ..runtime.schedule_spec import format_schedule

        schedule = result.trace.schedule
        tokens = self.tokens_of[job.bucket]
        base = tokens[self.solo.base_patch]
        totals = result.trace.totals()
        return {
            "resolution": job.bucket, "seed": req.seed, "steps": req.steps, "schedule": schedule,
            "schedule_text": format_schedule(schedule),
            "token_cost": round(sum(tokens[p] for p in schedule) / (base * len(schedule)), 6),
            "seconds": round(seconds, 6), "sampling_seconds": round(result.seconds, 6),
            "engine_seconds": round(totals["engine_seconds"], 6),
            "step_seconds": [round(s.seconds, 6) for s in result.trace.steps],
            "batch_sizes": result.batch_sizes, "replica_pid": os.getpid(),
            "cache": str(job.cache) if job.cache is not None else None,
            "cached_steps": sum(result.trace.cached),
            "loras": [{"name": s.name, "scale": s.scale} for s in job.loras],
        }

    # -- batching -----------------------------------------------------------------------------------
    @serve.batch(max_batch_size=1, batch_wait_timeout_s=0.01, max_concurrent_batches=1024)
    async def generate_batch(self, jobs: list) -> list:
        """The window's requests join the sampling loop together (and so start in lock-step); later windows join
        the same loop at its next step, up to --max-batch requests sampling at once."""
        futures = [self.batchers[job.bucket].submit(job) for job in jobs]
        results = []
        for future in futures:
            try:
                results.append(await asyncio.wrap_future(future))
            except Exception as err:  # that request's failure, answered as a 500
                results.append(err)
        return results


def replica_backend_options(backend: str, device: str) -> dict:
    """ONNX Runtime on the CPU runs on the CPUs this replica reserved: one reserved CPU, one intra-op thread.

    Why: the per-engine threading tuning (runtime/backends/ort_cpu_threading.py) times an idle machine and
    picks two-thread pools there, but a replica shares the cores with Ray's proxy, the HTTP work and other
    replicas. Measured on the 2-core build machine (demo engines, 1 replica, 8 clients, 2026-12-03):
    --max-batch 1 went from 12.9 to 17.8 requests/s with one thread; --max-batch 8 21.9 -> 21.4.
    A replica given more CPUs (--cpus-per-replica) keeps the tuning. The staged onnx backend ignores the option:
    its sessions keep ORT's pool, whose outputs a local solo run reproduces bit for bit (one thread's differ)."""
    if backend != "onnx" or device != "cpu":
        return {}
    from ray import get_runtime_context

    cpus = get_runtime_context().get_assigned_resources().get("CPU", 0.0)
    return {"cpu_threading": "single"} if cpus <= 1 else {}


def _tokens(latent_shape, patch: int) -> int:
    h, w = latent_shape[-2:]
    return -(-h // patch) * -(-w // patch)


def _error(err: RequestError) -> Answer:
    return Answer(err.status, json.dumps(err.to_json()).encode())


def deployment_options(replicas: int | None = None, autoscale: tuple[int, int] | None = None, max_batch: int = 1,
                       num_cpus: float = 1.0, num_gpus: float = 0.0, drain_timeout_s: float = DRAIN_TIMEOUT_S) -> dict:
    """`DDiTServer.options(...)`: replica count or autoscaling, one GPU per replica where there are GPUs; a
    replica that Ray stops (scale-down, redeploy) finishes its requests first, for at most `drain_timeout_s`."""
    options: dict = {
        "ray_actor_options": {"num_cpus": num_cpus, **({"num_gpus": num_gpus} if num_gpus else {})},
        # Enough requests in flight per replica to fill a batch while the previous one samples.
        "max_ongoing_requests": max(2 * max_batch, 4),
        "graceful_shutdown_timeout_s": drain_timeout_s, "graceful_shutdown_wait_loop_s": DRAIN_POLL_S,
    }
    if autoscale is not None:
        options["autoscaling_config"] = {"min_replicas": autoscale[0], "max_replicas": autoscale[1],
                                         "target_ongoing_requests": max_batch}
    else:
        options["num_replicas"] = replicas or 1
    return options


def build_app(args: dict):
    """Application builder for `serve run ddit_export.serve.app:build_app engine_dir=...` and config files
    (whose `deployments` section sets replicas and resources). Ray requires exactly one parameter."""
    return bind_app(args)


def ingress_options(drain_timeout_s: float = DRAIN_TIMEOUT_S) -> dict:
    """`DDiTIngress.options(...)`: one replica (it holds no engines; `ddit-export serve` drains it by its handle)."""
    return {"num_replicas": 1, "graceful_shutdown_timeout_s": drain_timeout_s,
            "graceful_shutdown_wait_loop_s": DRAIN_POLL_S}


def bind_app(args: dict, options: dict | None = None):
    """The application for `args` (build_app's keys): the ingress in front of `DDiTServer.options(**options)`
    (replicas, resources, ...)."""
    known = {"engine_dir", "backend", "batch_dirs", "max_batch", "batch_wait_ms", "embeds_dir", "default_steps",
             "default_cache", "lora_dir"}
    unknown = sorted(set(args) - known)
    if unknown or "engine_dir" not in args:
        raise ValueError(f"build_app takes {sorted(known)} (engine_dir required); got unknown {unknown}")
    batch_dirs = args.get("batch_dirs") or ()
    if isinstance(batch_dirs, str):
        batch_dirs = tuple(d for d in batch_dirs.split(",") if d)
    options = options or {}
    server = DDiTServer.options(**options).bind(
        str(args["engine_dir"]), args.get("backend", "onnx"), tuple(batch_dirs), int(args.get("max_batch", 1)),
        float(args.get("batch_wait_ms", 10.0)), args.get("embeds_dir"), int(args.get("default_steps", DEFAULT_STEPS)),
        args.get("default_cache"), args.get("lora_dir"),
    )
    drain = options.get("graceful_shutdown_timeout_s", DRAIN_TIMEOUT_S)
    return DDiTIngress.options(**ingress_options(drain)).bind(server)
