"""One small interface for every engine runtime, modelled on Polygraphy's runners.

A backend is loaded from an engine folder (its ``manifest.json``) and runs one static-shape
engine per patch size. Every engine has the same signature (docs/architecture.md): the full-resolution
latent plus the step's conditioning in, the full-resolution prediction out. So a call is one
dict lookup by patch size, and the dispatcher never reshapes anything::

    with get_backend("onnx", "engines/flux-tiny") as backend:
        pred = backend(4, latent, encoder_hidden_states=..., pooled_projections=...,
                       timestep=..., guidance=...)

Inputs are checked against the manifest's I/O spec (names and shapes) and cast to its dtypes, so
callers may pass fp32 conditioning to a bf16 engine. The returned tensor lives on the latent's
device; a backend may reuse its storage on the next call (as TensorRT output buffers do), so
clone it if you keep it across calls.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import torch
from typing_extensions import Self

from ...artifacts.dtypes import DTYPES
from ...artifacts.manifest import Manifest, read_manifest
from ...util.devices import parse_device

LATENT_INPUT = "latent"


class BackendError(ValueError):
    """A backend cannot load or run what it was given (bad input, not a bug)."""


def torch_dtype(name: str) -> torch.dtype:
    """numpy-style dtype name from an IOSpec -> torch dtype."""
    try:
        return getattr(torch, name)
    except AttributeError:
        raise BackendError(f"the manifest's I/O spec names dtype {name!r}, which torch does not know") from None


class Backend(ABC):
    """Runs the engines of one folder. Subclasses set ``name`` and implement ``_infer``."""

    name: str = "?"

    def __init__(self, folder: str | Path, manifest: dict | None = None, device: str | torch.device = "cpu"):
        self.folder = Path(folder)
        self.manifest = Manifest(manifest) if manifest is not None else read_manifest(self.folder)
        self.device = parse_device(device, "device")  # 'gpu0', 'cuda:99', 'meta': one ValueError, not a crash later
        if self.device.type == "cuda" and self.device.index is None and torch.cuda.is_available():
            # An explicit index, so device comparisons (and preallocated buffers) are stable.
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.io_spec = self.manifest.io
        self.latent_shape = self.manifest.latent_shape
        self.dtype = DTYPES[self.manifest.dtype]
        self.base_patch = self.manifest.base_patch
        # name -> (shape, torch dtype): checked and cast against on every call, in graph order.
        self._inputs = {t.name: (t.shape, torch_dtype(t.dtype)) for t in self.io_spec.inputs}
        if LATENT_INPUT not in self._inputs:
            raise BackendError(f"{self.folder}: the manifest's engines have no '{LATENT_INPUT}' input")

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device = "cpu", **options) -> Backend:
        """Load every engine the manifest in ``folder`` lists for this backend."""
        return cls(folder, read_manifest(folder), device, **options)

    # -- the runner interface ----------------------------------------------------------------------
    @property
    @abstractmethod
    def patch_sizes(self) -> tuple[int, ...]:
        """The patch sizes this backend has an engine for, ascending."""

    @property
    def conditioning_names(self) -> tuple[str, ...]:
        """Engine inputs besides the latent, in graph order."""
        return tuple(n for n in self._inputs if n != LATENT_INPUT)

    def __call__(self, patch: int, latent: torch.Tensor, **conditioning: torch.Tensor) -> torch.Tensor:
        """Prediction of the engine of ``patch`` for ``latent`` (same full-resolution shape)."""
        feeds = self._feeds(latent, conditioning)
        return self._infer(patch, feeds, latent.device)

    loras: tuple = ()  # the user LoRAs the engines run with (runtime/loras/)

    def set_loras(self, loras) -> None:
        """Run with these user LoRAs (`[(file, scale), ...]`; `[]` removes them): staged folders (docs/loras.md)."""
        self.check_loras(loras)

    def check_loras(self, loras) -> list:
        """Read and check a LoRA set without applying it; a single-layout folder refuses any."""
        if loras:
            from ..loras.files import LoraError

            raise LoraError(f"{self.folder} is a single-layout folder (one merged copy of the weights per patch "
                            "size), which takes no user LoRAs: re-export it with --layout staged (docs/loras.md)")
        return []

    @abstractmethod
    def close(self) -> None:
        """Release the engines; the backend is unusable afterwards."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.folder)!r}, sizes={list(self.patch_sizes)}, device={self.device})"

    # -- for subclasses ----------------------------------------------------------------------------
    @abstractmethod
    def _infer(self, patch: int, feeds: dict[str, torch.Tensor], out_device: torch.device) -> torch.Tensor:
        """Run engine ``patch`` on checked feeds (graph order, spec dtypes, contiguous)."""

    def _engine_missing(self, patch: int) -> BackendError:
        return BackendError(
            f"no {self.name} engine for patch size {patch} in {self.folder} (have {list(self.patch_sizes)})"
        )

    def _feeds(self, latent: torch.Tensor, conditioning: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Inputs in graph order, checked against the spec and cast to its dtypes.

        Only names and shapes are compared (host metadata): no device work unless a cast or a
        contiguity fix is needed.
        """
        given = {LATENT_INPUT: latent, **conditioning}
        if given.keys() != self._inputs.keys():
            missing = [n for n in self._inputs if n not in given]
            extra = [n for n in given if n not in self._inputs]
            raise BackendError(
                f"engine inputs are {list(self._inputs)}; missing {missing}, unexpected {extra}"
            )
        feeds = {}
        for name, (shape, dtype) in self._inputs.items():
            value = given[name]
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"input '{name}' must be a torch.Tensor (got {type(value).__name__}); "
                                "convert arrays with torch.from_numpy")
            if value.is_complex() or value.device.type == "meta":
                raise ValueError(f"input '{name}' is a {value.dtype} tensor on {value.device}: engines take real "
                                 f"tensors with data, on cpu or cuda")
            if tuple(value.shape) != shape:
                raise BackendError(
                    f"input '{name}' has shape {tuple(value.shape)}; the engines were built for {shape}"
                )
            feeds[name] = value.to(dtype=dtype).contiguous()
        return feeds
