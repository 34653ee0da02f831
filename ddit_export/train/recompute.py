"""Gradient checkpointing that recomputes each block with the LoRA adapter that ran it.

`DDiTModel` selects a size's adapter only inside its forward (`patch_size` context) and disables
adapters on the way out. diffusers' stock checkpointing recomputes blocks during backward, after
that context has closed: the recomputation would run without the adapter, with its weights no
longer requiring grad (peft flips `requires_grad` when adapters switch), and no longer match the
forward (torch reports a different number of saved tensors). Here each checkpointed call records
its block's adapter state and `requires_grad` flags at forward time and re-applies them around
the recomputation.
"""

from __future__ import annotations

import torch


def adapter_state(block) -> tuple[list, list]:
    """(layer, active adapter, disabled) for every peft layer in `block`, and each parameter's requires_grad."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    # The private fields, not set_adapter()/enable_adapters(): those would flip requires_grad themselves.
    layers = [(m, m._active_adapter, m._disable_adapters) for m in block.modules() if isinstance(m, BaseTunerLayer)]
    return layers, [(p, p.requires_grad) for p in block.parameters()]


def apply_adapter_state(state: tuple[list, list]) -> None:
    layers, grads = state
    for layer, active, disabled in layers:
        layer._active_adapter, layer._disable_adapters = active, disabled
    for param, requires_grad in grads:
        param.requires_grad_(requires_grad)


def checkpoint_with_adapter_state(block, *args):
    at_forward = adapter_state(block)

    def run(*inputs):
        current = adapter_state(block)
        apply_adapter_state(at_forward)  # a no-op in the forward itself; the recorded state in backward
        try:
            return block(*inputs)
        finally:
            apply_adapter_state(current)

    return torch.utils.checkpoint.checkpoint(run, *args, use_reentrant=False)


def enable_gradient_checkpointing(transformer) -> None:
    transformer.enable_gradient_checkpointing(gradient_checkpointing_func=checkpoint_with_adapter_state)
