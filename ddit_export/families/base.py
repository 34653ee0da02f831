"""What every model family provides, and the loading code they share.

A family knows its diffusers transformer class, the latent geometry, how to pack a latent into
tokens for any patch size, the RoPE coordinates of those tokens, and the conditioning inputs.
Everything DDiT-specific (new embeddings, adapters, merge, engines) is family-agnostic and lives
in `ddit_export.ddit`.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import torch

TensorSpecLike = tuple[str, tuple[int, ...]]


class ModelLoadError(ValueError):
    """The model argument names nothing loadable offline."""


class Family:
    name: str
    latent_channels: int
    base_patch: int
    vae_scale: int
    embed_name: str  # attribute of the transformer holding the patch embedding
    deembed_name: str  # attribute holding the output projection (de-embedding)
    rope_name: str  # attribute computing rotary embeddings
    lora_targets: str  # peft target_modules regex: the FFN linears
    presets: dict[str, dict]  # named random-weight configs: "tiny" for tests, reduced-depth real widths
    default_text_len: int

    @staticmethod
    def model_class():
        raise NotImplementedError

    # -- the following are implemented per family (see flux.py) --
    def check_image_size(self, height: int, width: int) -> None: ...
    def latent_shape(self, batch: int, height: int, width: int, frames: int | None = None): ...
    def tokens(self, latent_shape, patch: int) -> int: ...
    def pack(self, latent: torch.Tensor, patch: int) -> torch.Tensor: ...
    def unpack(self, tokens: torch.Tensor, patch: int, latent_shape) -> torch.Tensor: ...
    def image_ids(self, patch: int, latent_shape) -> torch.Tensor: ...
    def text_ids(self, text_len: int) -> torch.Tensor: ...
    def condition_specs(self, config, batch: int, text_len: int) -> list[TensorSpecLike]: ...
    def call_transformer(self, transformer, tokens, conditioning, img_ids, txt_ids): ...

    # -- shared --
    def patch_features(self, patch: int) -> int:
        return self.latent_channels * patch * patch

    def check_patch_sizes(self, sizes: list[int], latent_shape) -> None:
        """Refuse sizes the engines cannot build, with a line that says how to fix the request."""
        if self.base_patch not in sizes:
            raise ValueError(
                f"the base patch size {self.base_patch} must be among --patch-sizes (got {sizes}); "
                f"e.g. --patch-sizes {self.base_patch},{2 * self.base_patch}"
            )
        h, w = latent_shape[-2:]
        for p in sizes:
            if p <= 0 or p % self.base_patch:
                raise ValueError(f"patch size {p} is not a multiple of the base size {self.base_patch}")
            if h % p or w % p:
                raise ValueError(
                    f"patch size {p} does not divide the {h}x{w} latent grid; choose height and width "
                    f"that are multiples of {p * self.vae_scale} pixels, or drop size {p}"
                )

    def preset(self, name: str, seed: int = 0):
        """A random-weight model from a named config; the seed makes every build identical."""
        torch.manual_seed(seed)
        return self.model_class()(**self.presets[name])

    def tiny(self, seed: int = 0):
        return self.preset("tiny", seed)

    def load(self, model: str, dtype: torch.dtype = torch.float32):
        """Load the transformer from a preset name, a diffusers pipeline/transformer folder, or a cached id."""
        cls = self.model_class()
        if model in self.presets:
            built = self.preset(model)
            return built if dtype == torch.float32 else built.to(dtype)
        path = Path(model).expanduser()
        if path.is_dir():
            if (path / "transformer" / "config.json").is_file():
                return cls.from_pretrained(path, subfolder="transformer", torch_dtype=dtype)
            if (path / "config.json").is_file():
                return cls.from_pretrained(path, torch_dtype=dtype)
            raise ModelLoadError(
                f"{path} holds neither a diffusers pipeline (transformer/config.json) nor a transformer "
                "(config.json); point --model at the folder written by save_pretrained"
            )
        if path.exists() or model.startswith((".", "/", "~")):
            raise ModelLoadError(f"model path {model} does not exist or is not a folder")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # hub deprecation chatter; the outcome is reported below
                return cls.from_pretrained(model, subfolder="transformer", torch_dtype=dtype, local_files_only=True)
        except (OSError, ValueError) as err:
            raise ModelLoadError(
                f"model '{model}' is not a local folder and is not in the local Hugging Face cache "
                f"(no hub access at run time): download it beforehand, e.g. `hf download {model}`, "
                f"or pass a folder ({type(err).__name__})"
            ) from None


def config_hash(config) -> str:
    """Content hash of a diffusers config, ignoring bookkeeping keys (paths, library version)."""
    clean = {k: v for k, v in dict(config).items() if not k.startswith("_")}
    text = json.dumps(clean, sort_keys=True, default=list)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def family_by_name(name: str) -> Family:
    from .flux import FLUX

    families = {"flux": FLUX}
    if name not in families:
        raise ValueError(f"unknown model family '{name}'; known: {', '.join(sorted(families))}")
    return families[name]
