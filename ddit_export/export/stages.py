"""One stage per backend: turn a size's merged engine module into a validated artifact + manifest entry.

Each stage runs in two halves, so that the PyTorch model and a runtime's copy of the same weights are
never in memory at once (docs/export-memory.md): called with the engine in memory, a stage computes
torch's reference outputs and writes its artifact, and returns `finish`; the build calls `finish()`
after it has dropped the model, and `finish` validates the artifact against those reference outputs
(Polygraphy, same inputs, same tolerances) and returns the entry it adds to the manifest. A failure
raises `ValidationError` with the measured error.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..artifacts.manifest import sha256_file
from ..ddit.engine import ENGINE_OUTPUT, PatchSizeEngine
from ..ddit.merge import cast_engine
from .onnx_export import export_onnx
from .request import ExportRequest
from .validate import reference_outputs, require_valid, validate_callable_reference, validate_onnx_reference

# Half-precision engines are compared with relative metrics (docs/method.md, Validation).
HALF_TOLERANCES = dict(atol=5e-2, rtol=5e-2, min_cosine=0.997)


@dataclass
class SizeJob:
    """What every stage of one patch size works on."""

    req: ExportRequest
    patch: int
    engine: PatchSizeEngine | None  # fp32 until `to_product` casts it; None once the first halves are done
    inputs: dict  # fp32 sample inputs
    tmp: Path
    reporter: object

    @property
    def half(self) -> bool:
        return self.req.torch_dtype != torch.float32

    def to_product(self) -> None:
        """Cast the engine and inputs to the export dtype (keeping what the family keeps fp32)."""
        if not self.half or next(self.engine.parameters()).dtype == self.req.torch_dtype:
            return
        cast_engine(self.engine, self.req.torch_dtype)
        keep = self.req.family_obj.float32_inputs
        self.inputs = {k: v if k in keep else v.to(self.req.torch_dtype) for k, v in self.inputs.items()}

    def tolerances(self) -> dict:
        if self.half:
            return dict(HALF_TOLERANCES)
        return dict(atol=self.req.atol, rtol=self.req.rtol, min_cosine=self.req.min_cosine)

    def entry(self, backend: str, files: list[str], validation: dict, started: float, **extra) -> dict:
        fam, shape = self.req.family_obj, self.req.latent_shape
        return {
            "patch_size": self.patch,
            "backend": backend,
            "files": files,
            "sha256": [sha256_file(self.tmp / f) for f in files],
            "bytes": sum((self.tmp / f).stat().st_size for f in files),
            "tokens": fam.tokens(shape, self.patch),
            # Padding cost where the block does not divide the grid: tokens beyond the grid's exact area.
            "padded_grid": list(fam.padded_shape(shape, self.patch)[-2:]),
            "padding_tokens": round(fam.padding_tokens(shape, self.patch), 3),
            "validation": validation,
            "export_seconds": round(time.perf_counter() - started, 3),
            **extra,
        }


Finish = Callable[[], dict]  # the second half of a stage: validate, return the manifest entry


def onnx_stage(job: SizeJob) -> Finish:
    """fp32: export and validate. Half: validate the fp32 twin (ORT CPU has no half math), export the cast graph."""
    started, req = time.perf_counter(), job.req
    rel = f"onnx/p{job.patch}.onnx"
    path = job.tmp / rel
    twin = job.tmp / ".twin" / f"p{job.patch}.onnx" if job.half else path
    twin.parent.mkdir(parents=True, exist_ok=True)
    job.reporter.stage(job.patch, "onnx: export fp32" + (" twin" if job.half else ""))
    inputs = job.inputs
    reference = reference_outputs(job.engine, inputs, [ENGINE_OUTPUT])
    export_onnx(job.engine, inputs, [ENGINE_OUTPUT], twin, opset=req.opset, external_data=req.external_data)
    if job.half:
        job.reporter.stage(job.patch, f"onnx: export {req.dtype}")
        job.to_product()
        export_onnx(job.engine, job.inputs, [ENGINE_OUTPUT], path, opset=req.opset, external_data=req.external_data)
    first_half = time.perf_counter() - started

    def finish() -> dict:
        resumed = time.perf_counter()
        job.reporter.stage(job.patch, "onnx: validate")
        result = validate_onnx_reference(reference, inputs, twin, atol=req.atol, rtol=req.rtol,
                                         min_cosine=req.min_cosine)
        require_valid(result, f"patch size {job.patch} ({'fp32 twin' if job.half else 'fp32'})")
        validation = {**result.to_json(), "validated_as": "fp32-twin" if job.half else "fp32"}
        if job.half:
            for f in (twin, twin.with_name(twin.name + ".data")):
                f.unlink(missing_ok=True)
        files = [rel] + ([f"{rel}.data"] if (job.tmp / f"{rel}.data").exists() else [])
        return job.entry("onnx", files, validation, resumed - first_half)

    return finish


def aoti_stage(job: SizeJob) -> Finish:
    """AOTInductor package of the product-dtype engine, validated against the same eager module's outputs."""
    from .aoti import export_aoti

    started = time.perf_counter()
    job.to_product()
    rel = f"aoti/p{job.patch}.pt2"
    device = next(job.engine.parameters()).device
    job.reporter.stage(job.patch, f"aoti: compile ({device.type})")
    inputs = job.inputs
    reference = reference_outputs(job.engine, inputs, [ENGINE_OUTPUT])
    export_aoti(job.engine, inputs, job.tmp / rel)
    first_half = time.perf_counter() - started

    def finish() -> dict:
        resumed = time.perf_counter()
        from ..runtime.backends.aoti import load_aoti

        job.reporter.stage(job.patch, "aoti: validate")
        compiled = load_aoti(job.tmp / rel, device)
        result = validate_callable_reference(reference, inputs, compiled,
                                             f"aotinductor {torch.__version__} {device.type}", **job.tolerances())
        del compiled
        require_valid(result, f"patch size {job.patch} (AOTInductor)")
        validation = {**result.to_json(), "validated_as": job.req.dtype}
        return job.entry("aoti", [rel], validation, resumed - first_half, device=device.type)

    return finish


def trt_stage(job: SizeJob) -> Finish:
    """TensorRT plan from this size's validated ONNX graph, validated on the GPU against torch's outputs there."""
    from ..artifacts.tensorrt_plans import TIMING_CACHE, device_signature, plan_relpath
    from .tensorrt import build_plan, validate_plan

    started = time.perf_counter()
    job.to_product()
    # The reference on the GPU, where the plan runs: the engine's own copies go there, the model's stay put.
    feed = {k: v.cuda() for k, v in job.inputs.items()}
    reference = reference_outputs(job.engine.cuda(), feed, [ENGINE_OUTPUT])
    first_half = time.perf_counter() - started

    def finish() -> dict:
        resumed = time.perf_counter()
        signature = device_signature()
        rel = plan_relpath(job.patch, signature["tensorrt"])
        job.reporter.stage(job.patch, "trt: build")
        build_plan(job.tmp / f"onnx/p{job.patch}.onnx", job.tmp / rel, job.tmp / TIMING_CACHE)
        job.reporter.stage(job.patch, "trt: validate")
        result = validate_plan(job.tmp / rel, reference, feed, **job.tolerances())
        require_valid(result, f"patch size {job.patch} (TensorRT)")
        validation = {**result.to_json(), "validated_as": job.req.dtype}
        return job.entry("trt", [rel], validation, resumed - first_half, **signature)

    return finish


STAGES = {"onnx": onnx_stage, "aoti": aoti_stage, "trt": trt_stage}
