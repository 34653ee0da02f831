"""TensorRT plans from validated ONNX graphs, built with Polygraphy's loaders.

TensorRT is imported lazily: nothing here is needed unless `--artifacts` names `trt`. Engines are
strongly typed (TensorRT 10+/11 take precision from the ONNX dtypes; no fp16/bf16 builder flags),
built at optimisation level 3, and every size shares one timing cache. Plan names and the
compatibility check live in artifacts/tensorrt_plans.py (the runtime reads them too).
"""

from __future__ import annotations

from pathlib import Path

from ..artifacts.tensorrt_plans import require_tensorrt


def build_plan(onnx_path, plan_path, timing_cache, *, opt_level: int = 3, workspace_bytes: int | None = None,
               profiles: list | None = None, refittable: bool = False) -> Path:
    """Parse the ONNX graph strongly typed, build at `opt_level`, update the shared timing cache.

    `profiles`: Polygraphy `Profile`s for a graph with symbolic axes (the staged layout's trunk).
    `refittable`: the plan's weights can be replaced after the build (user LoRAs: docs/loras.md)."""
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
        refittable=refittable,
        load_timing_cache=str(timing_cache) if timing_cache.exists() else None,
    )
    engine = engine_from_network(network, config=config, save_timing_cache=str(timing_cache))
    save_engine(engine, path=str(plan_path))
    return plan_path


def validate_plan(plan_path, reference, feed, **tolerances):
    """Run the plan with Polygraphy's TrtRunner on `feed` (torch CUDA tensors) and compare with `reference`,
    torch's outputs on the same feed computed before (`validate.reference_outputs`)."""
    require_tensorrt()
    import tensorrt as trt
    from polygraphy.backend.common import BytesFromPath
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    from .validate import compare_with_reference

    # TrtRunner takes torch CUDA tensors, bf16 included
    runner = TrtRunner(EngineFromBytes(BytesFromPath(str(plan_path))), name="tensorrt")
    backend = f"tensorrt {trt.__version__}"
    return compare_with_reference(runner, reference, feed, feed, backend, **tolerances)
