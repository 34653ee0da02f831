"""The parts of a staged call, one at a time: what step caching needs from a staged backend.

`Backend.__call__(patch, latent, **conditioning)` runs embed -> trunk -> head in one go. A step cache
(`runtime/cache/`) runs them itself: the embed, then the trunk OR the cached residual, then the head.
Values pass between parts by name as torch tensors (each backend converts to its runtime's arrays
and back, without copies on the CPU); run in this order, the parts compute exactly what `__call__`
computes. Backends whose trunk is split after block 0 (`first_block_split`) also run the two halves
of the trunk apart, for first-block caching.
"""

from __future__ import annotations

import torch

from ..base import BackendError

# The trunk split after block 0 (torch backends: methods of the trunk module).
FIRST_BLOCK_OUTPUTS = ("head_tokens", "head_text_tokens")
OTHER_BLOCKS_OUTPUT = "trunk_tokens"
SIGNAL_WEIGHTS = ("transformer_blocks.0.norm1.linear.weight", "transformer_blocks.0.norm1.linear.bias")


class StagedCalls:
    """Mixin for staged backends; subclasses implement `_start(patch, feeds)` and `_part(patch, part, values)`."""

    first_block_split = False

    def run_embed(self, patch: int, latent: torch.Tensor, **conditioning: torch.Tensor) -> dict:
        """Check the inputs as `__call__` does and run the embed of `patch`: every named value so far."""
        feeds = self._feeds(latent, conditioning)
        if patch not in self.patch_sizes:
            raise self._engine_missing(patch)
        return self._part(patch, "embed", self._start(patch, feeds))

    def run_trunk(self, patch: int, values: dict) -> dict:
        """The whole trunk: adds `trunk_tokens` and `block_residual`."""
        return self._part(patch, "trunk", values)

    def run_first_block(self, patch: int, values: dict) -> dict:
        """Block 0 alone: adds `head_tokens` (image tokens after it) and `head_text_tokens`."""
        self._require_split()
        return self._part(patch, "first_block", values)

    def run_other_blocks(self, patch: int, values: dict) -> dict:
        """Blocks 1..N on block 0's outputs: adds `trunk_tokens`."""
        self._require_split()
        return self._part(patch, "other_blocks", values)

    def run_head(self, patch: int, values: dict, out_device: torch.device) -> torch.Tensor:
        """The head on `values` (its `trunk_tokens` computed or cached): the prediction."""
        return self._part(patch, "head", values)["prediction"].to(out_device)

    def signal_weights(self) -> dict[str, torch.Tensor]:
        """FLUX TeaCache: the weight and bias of block 0's `norm1` modulation (size-independent)."""
        raise BackendError(f"the {self.name} backend cannot read block 0's norm1 weights for TeaCache's FLUX signal")

    def _require_split(self) -> None:
        if not self.first_block_split:
            raise BackendError(f"first-block caching needs the trunk split after block 0, which the {self.name} "
                               "backend of this staged folder does not run; use --backend torch or torch-compile, "
                               "re-export with --first-block-split (ONNX Runtime), or --cache teacache")

    # -- for subclasses ----------------------------------------------------------------------------
    def _start(self, patch: int, feeds: dict) -> dict:
        raise NotImplementedError

    def _part(self, patch: int, part: str, values: dict) -> dict:
        raise NotImplementedError


def find_weights(named: dict, names=SIGNAL_WEIGHTS) -> dict[str, torch.Tensor]:
    """The tensors whose names end with `names` (parts may prefix them, e.g. `transformer.`)."""
    found = {}
    for want in names:
        hits = [k for k in named if k == want or k.endswith("." + want)]
        if not hits:
            raise BackendError(f"no tensor named {want} among the staged weights (is block 0 a FLUX double block?)")
        found[want] = named[hits[0]]
    return found
