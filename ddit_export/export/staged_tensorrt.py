"""TensorRT plans of the staged layout, built with Polygraphy from the validated fp32/product graphs.

- embed and head of every size: static plans, as single engines (`tensorrt.build_plan`);
- the trunk: ONE plan from the dynamic-token trunk graph with one optimisation profile per size,
  min = opt = max = that size's shapes, so each size is tuned as a static engine while the plan
  (and so the device) holds the block weights once.
TensorRT is imported lazily; without it these functions raise `TensorRTUnavailable` with the reason.
"""

from __future__ import annotations

from pathlib import Path

from .tensorrt import require_tensorrt

TRUNK_PLAN = "staged/trunk_trt{version}.plan"


def part_plan_relpath(part: str, patch: int, trt_version: str) -> str:
    return f"staged/{part}_p{patch}_trt{trt_version}.plan"


def trunk_profiles(trunk_io: dict, sizes: list[int], tokens: dict[int, int], text_len: int) -> list:
    """One Polygraphy `Profile` per size: every input's shape with the symbolic token axis resolved."""
    from polygraphy.backend.trt import Profile

    profiles = []
    for p in sizes:
        profile = Profile()
        for tensor in trunk_io["inputs"]:
            shape = tuple(_resolve(d, tokens[p], text_len) for d in tensor["shape"])
            profile.add(tensor["name"], min=shape, opt=shape, max=shape)
        profiles.append(profile)
    return profiles


def _resolve(dim, tokens: int, text_len: int) -> int:
    """A symbolic axis of the trunk graph ('tokens' or 'tokens + <text>') at one size's token count."""
    if isinstance(dim, int):
        return dim
    name, _, extra = str(dim).partition("+")
    if name.strip() != "tokens":
        raise ValueError(f"unexpected symbolic axis {dim!r} in the trunk graph")
    return tokens + (int(extra) if extra.strip() else 0)


def build_trunk_plan(onnx_path, plan_path, timing_cache, profiles: list, *, opt_level: int = 3) -> Path:
    """The trunk plan: strongly typed, one profile per size, the shared timing cache."""
    require_tensorrt()
    from polygraphy.backend.trt import CreateConfig, engine_from_network, network_from_onnx_path, save_engine

    plan_path, timing_cache = Path(plan_path), Path(timing_cache)
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    network = network_from_onnx_path(str(onnx_path), strongly_typed=True)
    config = CreateConfig(
        builder_optimization_level=opt_level,
        profiles=profiles,
        load_timing_cache=str(timing_cache) if timing_cache.exists() else None,
    )
    engine = engine_from_network(network, config=config, save_timing_cache=str(timing_cache))
    save_engine(engine, path=str(plan_path))
    return plan_path
