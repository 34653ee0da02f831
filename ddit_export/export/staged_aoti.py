"""AOTInductor packages of the staged layout, all reading ONE set of weights.

Every part of every size (the trunk once per size: AOTInductor code is static-shape) is compiled
with `aot_inductor.package_constants_in_so=False`, so no package carries weights. The weights are
written once to `staged/weights.safetensors` (each distinct tensor once; the names every part
knows it by are aliases in the file's metadata) and a loader hands the same tensors to every
package with `load_constants(..., user_managed=True)` (runtime/backends/staged_aoti.py): all sizes
cost one model's weights. File names: artifacts/layouts.py.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from .aoti import AotiError


def save_shared_weights(staged, path: Path) -> None:
    """Each distinct tensor of the staged model once; every name it has maps to it (metadata)."""
    from safetensors.torch import save_file

    canonical, aliases = {}, {}
    for name, t in [*staged.named_parameters(remove_duplicate=False), *staged.named_buffers(remove_duplicate=False)]:
        key = (t.data_ptr(), t.dtype, tuple(t.shape), t.stride())
        first = canonical.setdefault(key, (name, t))[0]
        aliases[name] = first
    tensors = {name: t.detach().contiguous().cpu() for name, t in canonical.values()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"aliases": json.dumps(aliases)})


def compile_part(module, inputs: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Inductor's autotuning chatter
            program = torch.export.export(module, args=(), kwargs=dict(inputs), strict=False)
            torch._inductor.aoti_compile_and_package(
                program, package_path=str(path), inductor_configs={"aot_inductor.package_constants_in_so": False})
    except Exception as err:
        cause = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise AotiError(f"AOTInductor could not compile {type(module).__name__}: {cause}") from err
