"""What an export is asked to build, checked before anything heavy happens."""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..families.base import family_by_name

BACKENDS = ("onnx", "aoti", "trt")  # the order stages run in: trt builds from the onnx graph
LAYOUTS = ("single", "staged")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class ExportRequest:
    family: str = "flux"
    model: str | None = None  # None: the family's default model (FLUX.1-dev, Wan 2.1 1.3B)
    patch_sizes: tuple[int, ...] = (2, 4)
    adapters: str | None = None
    height: int | None = None  # None: the family's default resolution
    width: int | None = None
    frames: int | None = None
    batch: int = 1
    text_len: int | None = None
    dtype: str = "bf16"
    opset: int = 20
    out: str | None = None
    force: bool = False
    external_data: bool | None = None  # None: only when the graph is >= 2 GiB
    atol: float = 1e-4
    rtol: float = 1e-3
    min_cosine: float = 0.9999
    backends: tuple[str, ...] | None = None  # None: onnx, plus trt where TensorRT and CUDA are present
    device: str = "auto"  # where the model is traced and AOTInductor compiles: auto = cuda when present
    tau: float | None = None  # the engines' default schedule; None keeps a calibrated one, else 1e-3
    rho: float | None = None  # None: as tau, else 0.4
    latent_channels: int | None = None  # set from the model's config once it is loaded; None: the family's
    layout: str = "single"  # single: one merged engine per size; staged: embed/head per size, one shared trunk

    def __post_init__(self):
        self.patch_sizes = tuple(sorted(set(int(p) for p in self.patch_sizes)))
        fam = family_by_name(self.family)
        self.model = self.model or fam.default_model
        self.height = self.height or fam.default_size[0]
        self.width = self.width or fam.default_size[1]
        if (self.tau is not None and self.tau < 0) or (self.rho is not None and not 0 < self.rho < 1):
            raise ValueError(f"scheduler tau must be >= 0 and rho in (0, 1) (got tau {self.tau}, rho {self.rho})")
        if self.text_len is None:
            self.text_len = fam.default_text_len
        if self.frames is None:
            self.frames = fam.default_frames
        if self.layout not in LAYOUTS:
            raise ValueError(f"--layout must be one of {', '.join(LAYOUTS)} (got {self.layout})")
        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype must be one of {', '.join(DTYPES)} (got {self.dtype})")
        if self.batch < 1 or self.text_len < 1:
            raise ValueError("--batch and --text-len must be at least 1")
        if self.opset < 20:
            raise ValueError(f"--opset must be at least 20 (got {self.opset}); the dynamo exporter needs it")
        fam.check_image_size(self.height, self.width, self.frames)
        fam.check_patch_sizes(list(self.patch_sizes), self.latent_shape)
        self.backends = self._checked_backends()
        if self.device == "auto":
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"--device {self.device}: no CUDA device is visible; use --device cpu")

    def _checked_backends(self) -> tuple[str, ...]:
        from .tensorrt import unavailable_reason

        if self.backends is None:
            return ("onnx",) if unavailable_reason() else ("onnx", "trt")
        backends = tuple(dict.fromkeys(self.backends))  # de-duplicated, order kept
        unknown = set(backends) - set(BACKENDS)
        if unknown:
            raise ValueError(f"unknown backend(s) {sorted(unknown)}; available: {', '.join(BACKENDS)}")
        if "onnx" not in backends:
            raise ValueError("--backends must include onnx: the I/O spec and TensorRT plans are made from it")
        if "trt" in backends and unavailable_reason():
            raise ValueError(f"--backends trt: {unavailable_reason()}")
        return tuple(b for b in BACKENDS if b in backends)

    @property
    def family_obj(self):
        return family_by_name(self.family)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return tuple(family_by_name(self.family).latent_shape(self.batch, self.height, self.width, self.frames,
                                                              self.latent_channels))

    @property
    def out_dir(self) -> Path:
        if self.out:
            return Path(self.out).expanduser()
        slug = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(self.model).name or self.model).strip("-")
        frames = f"x{self.frames}f" if self.frames else ""
        return Path("engines") / f"{self.family}-{slug}-{self.height}x{self.width}{frames}"

    def identity(self) -> dict:
        """The inputs that make an engine folder what it is (sizes and opset may be added or changed)."""
        keys = ("family", "model", "height", "width", "frames", "batch", "text_len", "dtype")
        identity = {k: v for k, v in asdict(self).items() if k in keys}
        if self.layout != "single":  # single folders keep their identity (and stage keys) from before layouts
            identity["layout"] = self.layout
        return identity

    def check_out_writable(self) -> None:
        out = self.out_dir
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {out} exists and is not a folder")
        parent = out.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        try:  # ask the file system itself: permission bits say nothing about /proc, read-only mounts, quotas
            probe = tempfile.mkdtemp(prefix=".ddit-probe-", dir=parent)
            os.rmdir(probe)
        except OSError as err:
            raise ValueError(
                f"--out {out} is not writable ({err.strerror} in {parent}); choose another --out"
            ) from None
