"""What an export is asked to build, checked before anything heavy happens."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from ..artifacts.dtypes import DTYPES
from ..families.registry import family_by_name
from ..runtime.rules import NEEDS_ERROR_MODEL, RULES
from ..util import limits
from ..util.atomic import check_writable
from ..util.devices import parse_device

# ARTIFACT KINDS an export writes (--artifacts; the manifest entries' "backend" key, kept for compatibility),
# in the order stages run: trt builds from the onnx graph. Not to be confused with the runtime backends that
# run them (runtime/backends: torch, torch-compile, onnx, onnx-trt, aoti, trt).
ARTIFACT_KINDS = ("onnx", "aoti", "trt")
LAYOUTS = ("single", "staged")


def bucket_name(height: int, width: int) -> str:
    return f"{height}x{width}"


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
    dtype: str | None = None  # None: bf16 when the export device is CUDA, else fp32 (see __post_init__)
    opset: int = 20
    out: str | None = None
    force: bool = False
    external_data: bool | None = None  # None: only when the weights reach 1.5 GiB (onnx_export.py)
    atol: float = 1e-4
    rtol: float = 1e-3
    min_cosine: float = 0.9999
    artifacts: tuple[str, ...] | None = None  # artifact kinds; None: onnx, plus trt where TensorRT and CUDA are present
    device: str = "auto"  # where the model is traced and AOTInductor compiles: auto = cuda when present
    tau: float | None = None  # the engines' default schedule; None keeps a calibrated one, else 1e-3
    rho: float | None = None  # None: as tau, else 0.4
    scheduler_sizes: tuple[int, ...] | None = None  # sizes the default schedule may pick; None: every size
    rule: str | None = None  # the engines' default dynamic rule (runtime/rules.py); None: DEFAULT_RULE
    error_model: dict | None = None  # the predicted-error rule's fitted model (ErrorModel.to_json); the demo ships one
    latent_channels: int | None = None  # set from the model's config once it is loaded; None: the family's
    layout: str = "single"  # single: one merged engine per size; staged: embed/head per size, one shared trunk
    first_block_split: bool = False  # staged, ONNX only: also block 0 and blocks 1..N as two graphs (--cache fbcache)
    kontext_reference: str = "step"  # FLUX.1-Kontext: reference tokens at the step's size or the "base" size
    variant: str | None = None  # diffusers weights variant to load (e.g. fp16: *.fp16.safetensors); None: plain files
    # Resolution buckets ("1024x1024,768x1344" or ((h, w), ...)): one folder serves each; the first is the default
    # (and sets height/width). None or one bucket: the folder of --height/--width, as before buckets.
    resolutions: tuple[tuple[int, int], ...] | None = None
    skip_resource_check: bool = False  # build even when free memory/disk is below the estimate (export/resources.py)

    def __post_init__(self):
        if isinstance(self.patch_sizes, (str, bytes)) or not hasattr(self.patch_sizes, "__iter__"):
            raise TypeError(f"patch_sizes takes a sequence of integers like (2, 4) (got {self.patch_sizes!r})")
        self.patch_sizes = tuple(sorted(set(limits.check_int(p, "--patch-sizes") for p in self.patch_sizes)))
        fam = family_by_name(self.family)
        self.model = stored_model_id(self.model or fam.default_model, fam)
        self._set_resolutions()
        geometry = fam.defaults.geometry(self.model)  # `tiny` defaults to a size that exports in seconds
        # `is None`, not `or`: --height 0 is a mistake to refuse, not a request for the default.
        self.height = geometry["height"] if self.height is None else limits.check_int(self.height, "--height",
                                                                                      high=limits.MAX_SIDE)
        self.width = geometry["width"] if self.width is None else limits.check_int(self.width, "--width",
                                                                                   high=limits.MAX_SIDE)
        if self.tau is not None:
            self.tau = limits.check_tau(self.tau)
        if self.rho is not None:
            self.rho = limits.check_rho(self.rho)
        self.atol = limits.check_float(self.atol, "--atol", low=0.0, low_open=True)
        self.rtol = limits.check_float(self.rtol, "--rtol", low=0.0, low_open=True)
        if self.text_len is None:
            self.text_len = fam.default_text_len
        if self.frames is None:
            self.frames = geometry["frames"]
        elif fam.default_frames:
            self.frames = limits.check_int(self.frames, "--frames", high=limits.MAX_FRAMES)
        self.batch = limits.check_int(self.batch, "--batch", high=limits.MAX_BATCH)
        self.text_len = limits.check_int(self.text_len, "--text-len", high=limits.MAX_TEXT_LEN)
        self.opset = limits.check_int(self.opset, "--opset")
        if self.layout not in LAYOUTS:
            raise ValueError(f"--layout must be one of {', '.join(LAYOUTS)} (got {self.layout})")
        if self.first_block_split and self.layout != "staged":
            raise ValueError("--first-block-split splits the staged trunk: add --layout staged")
        if self.opset < 20:
            raise ValueError(f"--opset must be at least 20 (got {self.opset}); the dynamo exporter needs it")
        for height, width in self.buckets:  # every bucket, so a bad one is refused before anything is built
            fam.check_image_size(height, width, self.frames)
            fam.check_patch_sizes(list(self.patch_sizes), fam.latent_shape(self.batch, height, width, self.frames,
                                                                           self.latent_channels))
        if self.rule is not None and self.rule not in RULES:
            raise ValueError(f"unknown scheduler rule {self.rule!r}: choose one of {', '.join(RULES)}")
        if self.rule in NEEDS_ERROR_MODEL and self.error_model is None:
            raise ValueError(f"--rule {self.rule} needs the engines' error model, which is fitted on the engines: "
                             "export with another rule, then run `ddit-export calibrate ENGINE_DIR --error-model`")
        if self.scheduler_sizes is not None:
            self.scheduler_sizes = tuple(sorted(set(int(p) for p in self.scheduler_sizes)))
            if not set(self.scheduler_sizes) <= set(self.patch_sizes) or fam.base_patch not in self.scheduler_sizes:
                raise ValueError(f"scheduler sizes {list(self.scheduler_sizes)} must be some of --patch-sizes "
                                 f"{list(self.patch_sizes)}, the base {fam.base_patch} included")
        self.artifacts = self._checked_artifacts()
        if self.first_block_split and set(self.artifacts) - {"onnx"}:
            raise ValueError("--first-block-split is built for ONNX Runtime only so far: export with --artifacts onnx")
        self.device = "cuda" if self.device == "auto" and torch.cuda.is_available() else self.device
        self.device = "cpu" if self.device == "auto" else str(parse_device(self.device))
        if self.dtype is None:  # what the export device can run: ONNX Runtime's CPU kernels have no bf16 math
            self.dtype = "bf16" if self.device.startswith("cuda") else "fp32"
        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype must be one of {', '.join(DTYPES)} (got {self.dtype})")

    def _set_resolutions(self) -> None:
        if self.resolutions is None:
            return
        buckets = limits.check_resolutions(self.resolutions)
        first = buckets[0]
        asked = (self.height, self.width)
        if asked != (None, None) and asked != first and len(buckets) > 1:
            raise ValueError(f"--resolutions starts with {first[0]}x{first[1]} but --height/--width ask "
                             f"{self.height}x{self.width}: the first bucket is the default; drop --height/--width")
        self.height, self.width = first
        self.resolutions = buckets if len(buckets) > 1 else None  # one bucket is a plain folder

    @property
    def buckets(self) -> list[tuple[int, int]]:
        """(height, width) of every resolution bucket, the default first."""
        return list(self.resolutions) if self.resolutions else [(self.height, self.width)]

    def at(self, height: int, width: int) -> ExportRequest:
        """This request for one bucket alone (same model, sizes, artifact kinds; the bucket's geometry)."""
        return replace(self, height=height, width=width, resolutions=None)

    def _checked_artifacts(self) -> tuple[str, ...]:
        from ..artifacts.tensorrt_plans import unavailable_reason

        if self.artifacts is None:
            return ("onnx",) if unavailable_reason() else ("onnx", "trt")
        kinds = tuple(dict.fromkeys(self.artifacts))  # de-duplicated, order kept
        unknown = set(kinds) - set(ARTIFACT_KINDS)
        if unknown:
            raise ValueError(f"unknown artifact kind(s) {sorted(unknown)}; available: {', '.join(ARTIFACT_KINDS)}")
        if "onnx" not in kinds:
            raise ValueError("--artifacts must include onnx: the I/O spec and TensorRT plans are made from it")
        if "trt" in kinds and unavailable_reason():
            raise ValueError(f"--artifacts trt: {unavailable_reason()}")
        return tuple(b for b in ARTIFACT_KINDS if b in kinds)

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
        if self.first_block_split:
            identity["first_block_split"] = True
        if self.variant:  # folders without one keep their identity
            identity["variant"] = self.variant
        if self.kontext_reference != "step":
            identity["kontext_reference"] = self.kontext_reference
        if self.resolutions:  # one-bucket folders keep their identity from before buckets
            identity["resolutions"] = [bucket_name(h, w) for h, w in self.resolutions]
        return identity

    def check_out_writable(self) -> None:
        check_writable(self.out_dir)


def stored_model_id(model: str, family) -> str:
    """The model id the manifest keeps: a local folder as an absolute path, so that the engines find its text
    encoders, VAE and weights from any working folder; presets, packaged models and hub ids as given."""
    from ..families.base import PACKAGED_MODELS

    if model in family.presets or ("/" not in model and (PACKAGED_MODELS / model / "transformer").is_dir()):
        return model
    path = Path(model).expanduser()
    return str(path.resolve()) if path.is_dir() else model
