"""PyTorch eager backend: the reference every compiled backend is compared against.

It ignores the artifacts and rebuilds each size's engine module from the model the manifest was
built from (same loader, same adapters, same merge as the export), so it runs exactly the graph
that was traced, in eager PyTorch. The model's weights hash must match the manifest's, otherwise
the engines on disk and this reference would silently disagree.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ...artifacts.manifest import Manifest, ManifestError, sha256_file, sha256_tensors
from ...ddit.loading import load_ddit_model
from ...ddit.merge import base_state_dict, build_engine
from ...ddit.model import DDiTModel
from ...families.registry import family_by_name
from .base import Backend


def load_manifest_model(manifest: Manifest) -> DDiTModel:
    """The DDiT model (fp32, CPU, eval) a manifest was built from, verified against its hashes.

    Uses the export's own loader (ddit/loading.py), so the DDiT modules are attached exactly as at export time; the
    base weights must hash as the manifest says, and a trained adapter pack as its file hash.
    """
    adapters = manifest["adapters"].get("path")
    if adapters and manifest["adapters"].get("sha256"):
        pack_file = Path(adapters) / "adapters.safetensors"
        if not pack_file.is_file():
            raise ManifestError(f"the manifest's adapter pack {adapters} is missing; it is needed by --backend torch")
        if sha256_file(pack_file) != manifest["adapters"]["sha256"]:
            raise ManifestError(
                f"adapter pack {pack_file} is not the one the engines were built with (sha256 differs); "
                "rebuild the engines or restore the pack"
            )
    family = family_by_name(manifest.family)
    variant = manifest.get("request", {}).get("variant")  # weights saved with e.g. variant="fp16"
    model = load_ddit_model(family, manifest.model_id, manifest.patch_sizes, adapters, variant=variant).model
    family.apply_request(model.transformer, manifest.get("request", {}))  # as the export did
    actual = sha256_tensors(base_state_dict(model.transformer))  # as the export hashes it: base weights only
    expected = manifest["model"]["weights_sha256"]
    if actual != expected:
        raise ManifestError(
            f"model '{manifest.model_id}' now has other weights than the engines were built from "
            f"(sha256 {actual[:12]}... != manifest {expected[:12]}...); rebuild the engines or point "
            "the manifest at the original model"
        )
    return model


def _shared_cast(device: torch.device, dtype: torch.dtype):
    """A `Module._apply` function that casts each distinct tensor once.

    The engines of all sizes share every weight their adapters do not touch (see merge.py); a plain
    `.to()` per engine would copy those shared weights once per size.
    """
    # key -> (source, cast). Holding the source keeps its address from being reused by another
    # tensor (which would then wrongly hit this entry) while the engines are being cast.
    done: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def cast(t: torch.Tensor) -> torch.Tensor:
        key = (t.data_ptr(), t.dtype, tuple(t.shape), t.stride(), t.device)
        if key not in done:
            done[key] = (t, t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype))
        return done[key][1]

    return cast


class TorchEagerBackend(Backend):
    """Eager PyTorch modules rebuilt from the manifest's model: one merged module per patch size."""

    name = "torch"

    def __init__(self, folder, manifest=None, device="cpu"):
        super().__init__(folder, manifest, device)
        model = load_manifest_model(self.manifest)
        text_len = self.manifest.text_len
        cast = _shared_cast(self.device, self.dtype)
        self._engines = {}
        with torch.no_grad():
            for patch in sorted(self.manifest.patch_sizes):
                engine = build_engine(model, patch, self.latent_shape, text_len)
                self._engines[patch] = engine._apply(cast).eval()

    @property
    def patch_sizes(self) -> tuple[int, ...]:
        return tuple(self._engines)

    def _infer(self, patch, feeds, out_device):
        engine = self._engines.get(patch)
        if engine is None:
            raise self._engine_missing(patch)
        # no_grad, not inference_mode: inference tensors would refuse the caller's in-place updates.
        with torch.no_grad():
            out = engine(**{k: v.to(self.device) for k, v in feeds.items()})
        return out.to(out_device)

    def close(self) -> None:
        self._engines = {}
