"""AOTInductor packages: one `.pt2` per patch size, compiled ahead of time for this device.

`torch.export` traces the merged engine module with static shapes (the same module the ONNX graph
comes from) and `aoti_compile_and_package` compiles it to a self-contained package that a server
loads with `aoti_load_package`, no Python model code needed. A package is compiled for the device
it was built on (CPU here, CUDA where the engine module lives on a GPU); runtime/backends/aoti.py loads it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch


class AotiError(RuntimeError):
    """torch.export or Inductor could not compile the engine."""


def export_aoti(module: torch.nn.Module, inputs: dict[str, torch.Tensor], path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Inductor's autotuning chatter
            program = torch.export.export(module, args=(), kwargs=dict(inputs), strict=False)
            torch._inductor.aoti_compile_and_package(program, package_path=str(path))
    except Exception as err:
        cause = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise AotiError(f"AOTInductor could not compile {type(module).__name__}: {cause}") from err
    return path
