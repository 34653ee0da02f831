"""TensorRT plans from validated ONNX graphs, built with Polygraphy's loaders.

TensorRT is imported lazily: nothing here is needed unless `--backends` names `trt`. Engines are
strongly typed (TensorRT 10+/11 take precision from the ONNX dtypes; no fp16/bf16 builder flags),
built at optimisation level 3, and every size shares one timing cache. A plan only runs on the
TensorRT version and GPU it was built for, so its name carries the version and the manifest
records the GPU; a mismatch is refused with a rebuild hint instead of failing inside TensorRT.
"""

from __future__ import annotations

from pathlib import Path

ALIGNMENT = 256  # bytes; TensorRT and CUDA allocations are at least this aligned
TIMING_CACHE = "trt/timing.cache"


class TensorRTUnavailable(ValueError):
    """TensorRT or CUDA is not present on this machine."""


class PlanMismatchError(ValueError):
    """A plan was built by another TensorRT version or for another GPU."""


def unavailable_reason() -> str | None:
    """Why TensorRT engines cannot be built or run here, or None when they can."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "TensorRT is not installed (pip install 'ddit-export[trt]' on a CUDA machine)"
    import torch

    if not torch.cuda.is_available():
        return "TensorRT needs a CUDA GPU and none is visible"
    return None


def require_tensorrt() -> None:
    reason = unavailable_reason()
    if reason:
        raise TensorRTUnavailable(reason)


def plan_relpath(patch: int, trt_version: str) -> str:
    """Deterministic plan name: patch size and the TensorRT version that can load it."""
    return f"trt/p{patch}_trt{trt_version}.plan"


def device_signature() -> dict:
    """What a plan is bound to: TensorRT version, GPU name and compute capability."""
    import tensorrt as trt
    import torch

    major, minor = torch.cuda.get_device_capability()
    return {"tensorrt": trt.__version__, "gpu": torch.cuda.get_device_name(), "compute_capability": f"{major}.{minor}"}


def check_plan_compatible(entry: dict, here: dict) -> None:
    """Refuse a plan built elsewhere, saying how to rebuild it."""
    built = {k: entry.get(k) for k in ("tensorrt", "gpu", "compute_capability")}
    if built["tensorrt"] != here["tensorrt"] or built["compute_capability"] != here["compute_capability"]:
        raise PlanMismatchError(
            f"{entry['files'][0]} was built with TensorRT {built['tensorrt']} for {built['gpu']} "
            f"(sm {built['compute_capability']}); this machine has TensorRT {here['tensorrt']} on {here['gpu']} "
            f"(sm {here['compute_capability']}). Rebuild the plans here: rerun the export with "
            "`--backends onnx,trt --force`"
        )


def aligned(nbytes: int, alignment: int = ALIGNMENT) -> int:
    return -(-int(nbytes) // alignment) * alignment


def shared_activation_bytes(per_engine_bytes) -> int:
    """One activation buffer serves every size's context: only one engine runs at a time."""
    sizes = list(per_engine_bytes)
    if not sizes:
        raise ValueError("no engines to plan activation memory for")
    return max(aligned(n) for n in sizes)


def build_plan(onnx_path, plan_path, timing_cache, *, opt_level: int = 3, workspace_bytes: int | None = None,
               profiles: list | None = None) -> Path:
    """Parse the ONNX graph strongly typed, build at `opt_level`, update the shared timing cache.

    `profiles`: Polygraphy `Profile`s for a graph with symbolic axes (the staged layout's trunk)."""
    require_tensorrt()
    import tensorrt as trt
    from polygraphy.backend.trt import CreateConfig, engine_from_network, network_from_onnx_path, save_engine

    plan_path, timing_cache = Path(plan_path), Path(timing_cache)
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    network = network_from_onnx_path(str(onnx_path), strongly_typed=True)
    pools = {trt.MemoryPoolType.WORKSPACE: workspace_bytes} if workspace_bytes else None
    config = CreateConfig(
        builder_optimization_level=opt_level,
        memory_pool_limits=pools,
        profiles=profiles,
        load_timing_cache=str(timing_cache) if timing_cache.exists() else None,
    )
    engine = engine_from_network(network, config=config, save_timing_cache=str(timing_cache))
    save_engine(engine, path=str(plan_path))
    return plan_path


def validate_plan(plan_path, module, inputs, **tolerances):
    """Run the plan with Polygraphy's TrtRunner and the torch module (on CUDA) on the same inputs."""
    require_tensorrt()
    import tensorrt as trt
    from polygraphy.backend.common import BytesFromPath
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    from .validate import compare_with_torch

    feed = {k: v.cuda() for k, v in inputs.items()}  # TrtRunner takes torch CUDA tensors, bf16 included
    runner = TrtRunner(EngineFromBytes(BytesFromPath(str(plan_path))), name="tensorrt")
    backend = f"tensorrt {trt.__version__}"
    return compare_with_torch(runner, module, feed, feed, ["prediction"], backend, **tolerances)
