"""A LoRA set checked against a model's linear layers, and the full weights it gives them.

Each weight is computed from the ORIGINAL weight (never from the weight a previous set left), so
applying A, then B, then A again gives A's weights bit for bit, and an empty set the originals. The
arithmetic is peft's `Linear.merge` as `fuse_lora(lora_scale=s)` runs it: the factors in the weight's
dtype (float32 for the matmul on the CPU, as peft does for half weights), `delta = (B @ A) * scaling * s`,
`W += delta`, LoRA after LoRA in the order given.
"""

from __future__ import annotations

import torch

from .files import PREFIX, LoraError, LoraFile

TRUNK_PREFIXES = ("transformer_blocks.", "single_transformer_blocks.", "blocks.")


def check_fits(lora: LoraFile, targets: dict[str, tuple[int, int]]) -> None:
    """Refuse, naming the file and its first bad key, a LoRA whose modules or shapes are not the model's."""
    for module, (a, b, _) in lora.factors.items():
        key = f"{PREFIX}{module}.lora_A.weight"
        if module not in targets:
            if not module.startswith(TRUNK_PREFIXES):
                raise LoraError(f"{lora.path}: key {key} targets {module}, outside the transformer blocks: engines "
                                "apply LoRAs to the trunk every patch size shares; use a blocks-only LoRA")
            raise LoraError(f"{lora.path}: key {key} does not fit the model (it has no linear layer {module}): "
                            "a LoRA made for another model")
        out, inp = targets[module]
        if a.shape[1] != inp or b.shape[0] != out:
            raise LoraError(f"{lora.path}: key {key} has shape {tuple(a.shape)} with lora_B {tuple(b.shape)}, but "
                            f"{module} is {out} x {inp} (out x in): a LoRA made for another model size")


def merged_weight(original: torch.Tensor, terms: list[tuple[torch.Tensor, torch.Tensor, float]]) -> torch.Tensor:
    """`original` (out x in) plus every `(A, B, scaling * scale)` term, as peft merges them."""
    weight = original.detach().clone()
    for a, b, scaling in terms:
        a = a.to(device=weight.device, dtype=weight.dtype)
        b = b.to(device=weight.device, dtype=weight.dtype)
        half_on_cpu = weight.device.type == "cpu" and weight.dtype in (torch.float16, torch.bfloat16)
        if half_on_cpu:
            a, b = a.float(), b.float()
        delta = (b @ a) * scaling
        weight += delta.to(weight.dtype) if half_on_cpu else delta
    return weight
