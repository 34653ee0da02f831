"""TensorRT for the staged layout: names of the plans and the trunk's optimisation profiles.

- embed and head of every size: static plans, as single engines (`tensorrt.build_plan`);
- the trunk: ONE plan from the dynamic-token trunk graph with one optimisation profile per size,
  min = opt = max = that size's shapes, so each size is tuned as a static engine while the plan
  (and so the device) holds the block weights once (`build_plan(..., profiles=trunk_profiles(...))`).
Nothing here imports TensorRT (Polygraphy's `Profile` does not need it).
"""

from __future__ import annotations

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
