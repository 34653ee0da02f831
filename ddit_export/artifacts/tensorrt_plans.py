"""TensorRT plans in an engine folder: their names, what they are bound to, and the compatibility check.

A plan only runs on the TensorRT version and GPU it was built for, so its name carries the version
and the manifest records the GPU; a mismatch is refused with a rebuild hint instead of failing
inside TensorRT. The staged layout has per-size embed/head plans and ONE trunk plan whose token axis
is symbolic (`resolve_axis`). Export (export/tensorrt.py) and runtime (runtime/backends/) both read
this; TensorRT is imported lazily.
"""

from __future__ import annotations

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


def resolve_axis(dim, tokens: int, text_len: int) -> int:
    """A symbolic axis of the trunk graph ('tokens' or 'tokens + <text>') at one size's token count."""
    if isinstance(dim, int):
        return dim
    name, _, extra = str(dim).partition("+")
    if name.strip() != "tokens":
        raise ValueError(f"unexpected symbolic axis {dim!r} in the trunk graph")
    return tokens + (int(extra) if extra.strip() else 0)
