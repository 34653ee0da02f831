"""One reading of device strings for the command line and the Python API."""

from __future__ import annotations


def parse_device(name, flag: str = "--device"):
    """`cpu`, `cuda`, `cuda:N` (or a torch.device) -> torch.device, or one ValueError saying why not.

    torch accepts strings such as `meta` or `cuda:99` that no engine can run on; they are refused
    here rather than failing later inside a backend.
    """
    import torch

    if not isinstance(name, (str, torch.device)):
        raise TypeError(f"{flag} takes a device string such as 'cpu' or 'cuda:0' (got {type(name).__name__})")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"{flag} {name!r} is not a device; use cpu, cuda or cuda:N") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise ValueError(f"{flag} {name!r}: engines run on cpu or cuda[:N], not {device.type}")
    if not torch.cuda.is_available():
        raise ValueError(f"{flag} {name!r}, but this torch sees no CUDA device; use --device cpu")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"{flag} {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                         f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return device
