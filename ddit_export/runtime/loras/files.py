"""LoRA files as users have them, read through diffusers' own loader and key conversion.

`FluxPipeline.lora_state_dict` reads diffusers/peft safetensors and converts kohya, XLabs and other
FLUX layouts to diffusers' keys (`transformer.<module>.lora_A.weight`, `...lora_B.weight`); the
scaling of each module is then what diffusers' `load_lora_weights` would give it: the `LoraConfig`
diffusers builds (`_create_lora_config`: the file's metadata, else its alphas, else alpha = rank) read
per module with peft's own pattern lookup. So `delta = scale * scaling * B @ A` is exactly what
`fuse_lora(lora_scale=scale)` adds to the weight.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

PREFIX = "transformer."
SUFFIXES = (".lora_A.weight", ".lora_B.weight")


class LoraError(ValueError):
    """A LoRA file or argument that cannot be used (bad input, not a bug): one line, naming the file."""


@dataclass(frozen=True)
class LoraSpec:
    """One LoRA to apply: its file and the scale `fuse_lora(lora_scale=...)` would take."""

    path: Path
    scale: float = 1.0

    @property
    def name(self) -> str:
        return self.path.stem

    def to_json(self) -> dict:
        return {"name": self.name, "path": str(self.path), "scale": self.scale}


@dataclass
class LoraFile:
    """module name (the diffusers transformer's) -> (A: r x in, B: out x r, scaling alpha/r)."""

    path: Path
    factors: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes + b.nbytes for a, b, _ in self.factors.values())


def parse_lora_arg(text: str) -> LoraSpec:
    """`FILE[:SCALE]` (the CLI's `--lora`): a trailing `:number` is the scale, 1.0 without one."""
    path, _, scale = str(text).rpartition(":")
    if path and scale:
        try:
            value = float(scale)
        except ValueError:
            return as_spec((text, 1.0))  # a ':' that is part of the path
        return as_spec((path, value))
    return as_spec((text, 1.0))


def as_spec(item) -> LoraSpec:
    """A LoraSpec from a spec, a path, or a `(path, scale)` pair (the Python interfaces take all three)."""
    if isinstance(item, LoraSpec):
        return item
    path, scale = (item, 1.0) if isinstance(item, (str, Path)) else item
    scale = float(scale)
    if not math.isfinite(scale):
        raise LoraError(f"{path}: LoRA scale {scale} is not a finite number")
    return LoraSpec(Path(path), scale)


def read_lora(path: str | Path) -> LoraFile:
    """Read one LoRA file (any layout diffusers' FLUX loader converts); refuse what is not a plain LoRA."""
    from diffusers import FluxPipeline

    path = Path(path)
    if not path.is_file():
        raise LoraError(f"{path}: no such LoRA file (pass a .safetensors LoRA, e.g. --lora style.safetensors:0.8)")
    try:
        state, alphas, metadata = FluxPipeline.lora_state_dict(str(path), return_alphas=True,
                                                                return_lora_metadata=True)
    except Exception as exc:  # diffusers' loader raises many types; the user needs the file and the reason
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LoraError(f"{path}: diffusers cannot read this LoRA file ({reason})") from None
    if not state:
        raise LoraError(f"{path}: the file holds no LoRA weights")
    for key in state:
        if not key.startswith(PREFIX):
            raise LoraError(f"{path}: key {key} is not a transformer LoRA weight (engines hold only the transformer; "
                            "text-encoder LoRAs are not supported): use a transformer-only LoRA")
    state = {k[len(PREFIX):]: v for k, v in state.items()}
    for key in state:
        if not key.endswith(SUFFIXES):
            raise LoraError(f"{path}: key {PREFIX}{key} is not a plain LoRA factor (lora_A/lora_B weights; DoRA, "
                            "LoKr, biases and full weights are not supported)")
    alphas = {k[len(PREFIX):]: v for k, v in (alphas or {}).items() if k.startswith(PREFIX)} or None
    if metadata:
        metadata = {k[len(PREFIX):]: v for k, v in metadata.items() if k.startswith(PREFIX)} or None
    config = _lora_config(path, state, alphas, metadata)
    lora = LoraFile(path)
    for module in sorted({k.rsplit(".lora_", 1)[0] for k in state}):
        a, b = state.get(module + SUFFIXES[0]), state.get(module + SUFFIXES[1])
        if a is None or b is None:
            missing = module + (SUFFIXES[0] if a is None else SUFFIXES[1])
            raise LoraError(f"{path}: key {PREFIX}{missing} is missing (each module needs lora_A and lora_B)")
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise LoraError(f"{path}: key {PREFIX}{module}.lora_A.weight has shape {tuple(a.shape)} and lora_B "
                            f"{tuple(b.shape)}: not a rank-r pair (r x in, out x r)")
        lora.factors[module] = (a, b, _scaling(config, module))
    return lora


def _lora_config(path: Path, state: dict, alphas, metadata):
    """The `LoraConfig` diffusers' `load_lora_adapter` builds for this state dict (same private helper)."""
    from diffusers.utils.peft_utils import _create_lora_config

    rank = {f"^{k}": v.shape[1] for k, v in state.items() if "lora_B" in k and v.ndim > 1}
    try:
        return _create_lora_config(state, alphas, metadata, rank)
    except Exception as exc:
        raise LoraError(f"{path}: its LoRA configuration is not one peft accepts ({exc})") from None


def _scaling(config, module: str) -> float:
    """peft's per-module scaling (`LoraModel._create_and_replace` + `LoraLayer.update_layer`)."""
    from peft.utils.other import get_pattern_key

    r = config.rank_pattern.get(get_pattern_key(config.rank_pattern.keys(), module), config.r)
    alpha = config.alpha_pattern.get(get_pattern_key(config.alpha_pattern.keys(), module), config.lora_alpha)
    return alpha / math.sqrt(r) if config.use_rslora else alpha / r
