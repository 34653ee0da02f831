"""TensorRT for the staged layout: the trunk's optimisation profiles (plan names: artifacts/tensorrt_plans.py).

- embed and head of every size: static plans, as single engines (`tensorrt.build_plan`);
- the trunk: ONE plan from the dynamic-token trunk graph with one optimisation profile per size,
  min = opt = max = that size's shapes, so each size is tuned as a static engine while the plan
  (and so the device) holds the block weights once (`build_plan(..., profiles=trunk_profiles(...))`).
Nothing here imports TensorRT (Polygraphy's `Profile` does not need it).
"""

from __future__ import annotations

from ..artifacts.tensorrt_plans import resolve_axis


def trunk_profiles(trunk_io: dict, sizes: list[int], tokens: dict[int, int], text_len: int) -> list:
    """One Polygraphy `Profile` per size: every input's shape with the symbolic token axis resolved."""
    from polygraphy.backend.trt import Profile

    profiles = []
    for p in sizes:
        profile = Profile()
        for tensor in trunk_io["inputs"]:
            shape = tuple(resolve_axis(d, tokens[p], text_len) for d in tensor["shape"])
            profile.add(tensor["name"], min=shape, opt=shape, max=shape)
        profiles.append(profile)
    return profiles
