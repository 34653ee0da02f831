"""What every model family provides, and the loading code they share.

A family knows its diffusers transformer class, the latent geometry, how to pack a latent into
tokens for any patch size, the RoPE coordinates of those tokens, and the conditioning inputs.
Everything DDiT-specific (new embeddings, adapters, merge, engines) is family-agnostic and lives
in `ddit_export.ddit`.
"""

from __future__ import annotations

import json
import warnings
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F

TensorSpecLike = tuple[str, tuple[int, ...]]
# Models shipped inside the package: `--model NAME` loads `assets/NAME/transformer/` (a diffusers folder).
PACKAGED_MODELS = Path(__file__).resolve().parent.parent / "assets"


class ModelLoadError(ValueError):
    """The model argument names nothing loadable offline."""


class Family:
    """Per-family facts and the few operations that differ between model families.

    Patch space is shared by all families: a token of size P holds the `C x P x P` block of one
    latent frame, features ordered (channel, dy, dx). Video latents (`B x C x F x h x w`) give
    F times more tokens; image latents are `B x C x h x w`.
    """

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
    default_frames: int | None = None
    timestep_scale: float = 1.0  # what the pipeline passes as timestep: sigma (1.0) or sigma*1000
    float32_inputs: tuple[str, ...] = ()  # engine inputs the pipeline passes in fp32 whatever the model dtype
    default_model: str = ""
    default_size: tuple[int, int] = (1024, 1024)
    staged_parts: ModuleType | None = None  # the staged layout's part module (ddit/staged_<name>.py); None: none

    @staticmethod
    def model_class():
        raise NotImplementedError

    # -- implemented per family (see flux.py, wan.py) --
    def check_image_size(self, height: int, width: int, frames: int | None = None) -> None: ...
    def latent_shape(self, batch: int, height: int, width: int, frames: int | None = None,
                     channels: int | None = None): ...
    def condition_specs(self, config, batch: int, text_len: int) -> list[TensorSpecLike]: ...
    def predict(self, transformer, latent, patch: int, conditioning: dict): ...
    def new_embed(self, base_embed, patch: int): ...
    def fold_embed(self, embed): ...
    def new_deembed(self, base_deembed, patch: int): ...
    def rope_tables(self, transformer, patch: int, latent_shape, text_len: int): ...

    def grid_specs(self, config, latent_shape) -> list[TensorSpecLike]:
        """Engine inputs on the latent's grid besides the latent (FLUX Control/Fill/Kontext); none by default."""
        return []

    def check_config(self, config: dict, pipeline_class: str | None) -> None:
        """Refuse a model the engines cannot reproduce from its config.json alone, before loading weights.

        ``pipeline_class``: the pipeline folder's model_index.json `_class_name` (None for a transformer folder).
        """
        expected = self.model_class().__name__
        name = config.get("_class_name")
        if name is not None and name != expected:
            raise ModelLoadError(f"the model's transformer is a {name}; `ddit-export {self.name}` exports "
                                 f"{expected} models")

    def experts_of(self, model: str) -> dict | None:
        """A model of two experts switched by timestep (Wan 2.2 A14B): how, as the manifest's `experts`; else None."""
        return None

    def apply_request(self, transformer, request: dict) -> None:
        """Record export options that change the engines' graph in the model's config (FLUX: Kontext's
        reference size); ``request`` is the export request's identity (a manifest's "request")."""

    def mark_pipeline(self, transformer, pipeline_class: str | None):
        """Record in the loaded model's config what its config alone does not say (FLUX: Kontext)."""
        return transformer

    def eager_rope(self, transformer, patch: int):
        """RoPE module for an eager call at `patch`, or None when positions come in as ids (FLUX)."""
        return None

    def engine_config(self, config, patch: int) -> dict:
        """Config of the merged per-size model instance (Wan's forward reads its patch size from it)."""
        return dict(config)

    @contextmanager
    def patch_config(self, transformer, patch: int):
        """Temporarily make the model's config say `patch` where its forward reads it; FLUX needn't."""
        yield

    # -- shared geometry --
    def check_pixels(self, height: int, width: int) -> None:
        """The VAE and the base patch need height and width in multiples of vae_scale * base_patch."""
        step = self.vae_scale * self.base_patch
        if height % step or width % step or height <= 0 or width <= 0:
            raise ValueError(
                f"height and width must be positive multiples of {step} for {self.name} (got {height}x{width}); "
                f"try {max(step, round(height / step) * step)}x{max(step, round(width / step) * step)}"
            )

    def latent_channels_of(self, config) -> int:
        """Latent channels of a model with this config (the family's VAE latent unless overridden)."""
        return self.latent_channels

    def patch_features(self, patch: int, channels: int | None = None) -> int:
        return (channels or self.latent_channels) * patch * patch

    def padded_shape(self, latent_shape, patch: int) -> tuple[int, ...]:
        """The latent shape rounded up so that `patch` divides the grid (docs/method.md, Scheduler: padding)."""
        *lead, h, w = latent_shape
        return (*lead, -(-h // patch) * patch, -(-w // patch) * patch)

    def tokens(self, latent_shape, patch: int) -> int:
        """Image/video tokens the engine of `patch` processes (on the padded grid)."""
        *_, h, w = self.padded_shape(latent_shape, patch)
        frames = latent_shape[2] if len(latent_shape) == 5 else 1
        return frames * (h // patch) * (w // patch)

    def padding_tokens(self, latent_shape, patch: int) -> float:
        """Extra tokens padding costs: padded token count minus the grid's exact token area."""
        *_, h, w = latent_shape
        frames = latent_shape[2] if len(latent_shape) == 5 else 1
        return self.tokens(latent_shape, patch) - frames * h * w / patch**2

    def pad(self, latent: torch.Tensor, patch: int) -> torch.Tensor:
        """Replicate-pad the grid bottom/right to a multiple of `patch` (the scheduler pads alike)."""
        *_, h, w = latent.shape
        ph, pw = -h % patch, -w % patch
        if not (ph or pw):
            return latent
        squeeze = latent.dim() == 4
        x = latent.unsqueeze(2) if squeeze else latent  # replicate padding of the last 2 dims needs 5-D
        x = F.pad(x, (0, pw, 0, ph, 0, 0), mode="replicate")
        return x.squeeze(2) if squeeze else x

    @staticmethod
    def crop(prediction: torch.Tensor, latent_shape) -> torch.Tensor:
        *_, h, w = latent_shape
        if tuple(prediction.shape[-2:]) == (h, w):
            return prediction
        return prediction[..., :h, :w]

    def pack(self, latent: torch.Tensor, patch: int) -> torch.Tensor:
        """`B x C [x F] x h x w` -> `B x tokens x (C*P*P)`, features ordered (c, dy, dx)."""
        x = latent if latent.dim() == 5 else latent.unsqueeze(2)
        b, c, f, h, w = x.shape
        x = x.reshape(b, c, f, h // patch, patch, w // patch, patch)
        return x.permute(0, 2, 3, 5, 1, 4, 6).reshape(b, f * (h // patch) * (w // patch), c * patch * patch)

    def unpack(self, tokens: torch.Tensor, patch: int, latent_shape) -> torch.Tensor:
        video = len(latent_shape) == 5
        b, c, f, h, w = latent_shape if video else (latent_shape[0], latent_shape[1], 1, *latent_shape[2:])
        x = tokens.reshape(b, f, h // patch, w // patch, c, patch, patch)
        x = x.permute(0, 4, 1, 2, 5, 3, 6).reshape(b, c, f, h, w)
        return x if video else x.squeeze(2)

    def check_patch_sizes(self, sizes: list[int], latent_shape) -> None:
        """Refuse sizes the engines cannot build, with a line that says how to fix the request."""
        if self.base_patch not in sizes:
            raise ValueError(
                f"the base patch size {self.base_patch} must be among --patch-sizes (got {sizes}); "
                f"e.g. --patch-sizes {self.base_patch},{2 * self.base_patch}"
            )
        for p in sizes:
            if p <= 0 or p % self.base_patch:
                raise ValueError(f"patch size {p} is not a multiple of the base size {self.base_patch}")
        h, w = latent_shape[-2:]
        if h % self.base_patch or w % self.base_patch:
            raise ValueError(f"the base patch {self.base_patch} must divide the {h}x{w} latent grid")
        too_big = [p for p in sizes if p > min(h, w)]
        if too_big:  # a block wider than the grid is mostly padding: refused before it allocates anything
            raise ValueError(
                f"patch size(s) {too_big} do not fit in the {h}x{w} latent grid ({h * self.vae_scale}x"
                f"{w * self.vae_scale} pixels); use sizes up to {min(h, w)} or a larger --height/--width"
            )

    def preset(self, name: str, seed: int = 0):
        """A random-weight model from a named config; the seed makes every build identical."""
        torch.manual_seed(seed)
        return self.model_class()(**self.presets[name])

    def tiny(self, seed: int = 0):
        return self.preset("tiny", seed)

    def load(self, model: str, dtype: torch.dtype = torch.float32, variant: str | None = None):
        """Load the transformer from a preset name, a model shipped with the package, a diffusers
        pipeline/transformer folder, or a cached hub id. ``variant``: diffusers' weights variant (e.g. fp16)."""
        cls = self.model_class()
        if model in self.presets:
            built = self.preset(model)
            return built if dtype == torch.float32 else built.to(dtype)
        packaged = PACKAGED_MODELS / model / "transformer"
        if "/" not in model and (packaged / "config.json").is_file():
            built = self._load_folder(cls, packaged, packaged, None, dtype)
            built.register_to_config(_name_or_path=model)  # its id, not the install path (a plain JSON string)
            return built
        path = Path(model).expanduser()
        if path.is_dir():
            for folder, sub in ((path / "transformer", "transformer"), (path, None)):
                if (folder / "config.json").is_file():
                    pipeline_class = pipeline_class_of(path) if sub else None
                    self.check_config(read_config(folder / "config.json"), pipeline_class)
                    built = self._load_folder(cls, path, folder, sub, dtype, variant)
                    return self.mark_pipeline(built, pipeline_class)
            raise ModelLoadError(
                f"{path} holds neither a diffusers pipeline (transformer/config.json) nor a transformer "
                "(config.json); point --model at the folder written by save_pretrained"
            )
        if path.exists() or model.startswith((".", "/", "~")) or model.count("/") > 1:
            # not a hub id ([org/]name): a path missing from here; a relative one is relative to this folder
            where = "" if path.is_absolute() else f" (relative to {Path.cwd()})"
            raise ModelLoadError(f"model path {model} does not exist or is not a folder{where}; "
                                 "pass the model folder's absolute path")
        pipeline_class = self._check_cached(model)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # hub deprecation chatter; the outcome is reported below
                built = cls.from_pretrained(model, subfolder="transformer", torch_dtype=dtype, local_files_only=True,
                                            variant=variant)
        except (OSError, ValueError) as err:
            raise ModelLoadError(
                f"model '{model}' is not a local folder (relative to {Path.cwd()}) and is not in the local Hugging "
                f"Face cache (no hub access at run time): download it beforehand, e.g. `hf download {model}`, "
                f"pass a folder, or try the offline preset `--model tiny` ({type(err).__name__})"
            ) from None
        return self.mark_pipeline(built, pipeline_class)

    def _check_cached(self, model: str) -> str | None:
        """A cached hub model's config checked before its weights load; its pipeline class (Kontext) returned."""
        from huggingface_hub import try_to_load_from_cache

        def cached(name: str) -> dict | None:
            try:
                found = try_to_load_from_cache(model, name)
            except ValueError:  # not a valid repo id: from_pretrained below says what is wrong
                return None
            return read_config(Path(found)) if isinstance(found, str) else None

        config = cached("transformer/config.json")
        index = cached("model_index.json")
        pipeline_class = index.get("_class_name") if index else None
        if config is not None:
            self.check_config(config, pipeline_class)
        return pipeline_class

    @staticmethod
    def _load_folder(cls, path: Path, folder: Path, subfolder: str | None, dtype: torch.dtype,
                     variant: str | None = None):
        """from_pretrained on a folder, with a damaged config or missing weights named in one line."""
        config = folder / "config.json"
        try:
            json.loads(config.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ModelLoadError(f"{config} is not valid JSON ({err}); restore it from the model's source") from None
        if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
            # checked here: diffusers would log its own error lines before raising
            raise ModelLoadError(f"{folder} has a config.json but no weights (*.safetensors or *.bin); copy the "
                                 "model's weights files there")
        found = weight_variants(folder)
        if variant is None and found and None not in found:
            raise ModelLoadError(f"{folder} holds only {'/'.join(sorted(found))} weights (saved with a variant); "
                                 f"pass --variant {sorted(found)[0]}")
        if variant is not None and variant not in found:
            have = ", ".join(sorted(v or "(none)" for v in found))
            raise ModelLoadError(f"{folder} has no {variant} weights (variants there: {have}); fix --variant")
        try:
            # str(): diffusers records the argument as the config's _name_or_path, which must stay JSON.
            return cls.from_pretrained(str(path), subfolder=subfolder, torch_dtype=dtype, variant=variant)
        except (OSError, ValueError, TypeError, KeyError, RuntimeError) as err:
            first = " ".join(str(err).split())[:300]
            raise ModelLoadError(f"{folder} cannot be loaded as a {cls.__name__} ({type(err).__name__}: {first}); "
                                 "check its config.json and weights files") from None


def read_config(path: Path) -> dict:
    """A config.json as a dict; damaged JSON is one line naming the file."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelLoadError(f"{path} is not valid JSON ({err}); restore it from the model's source") from None


def pipeline_class_of(folder: Path) -> str | None:
    """The `_class_name` of a diffusers pipeline folder's model_index.json (None without one)."""
    index = folder / "model_index.json"
    if not index.is_file():
        return None
    return read_config(index).get("_class_name")


def weight_variants(folder: Path) -> set[str | None]:
    """Weights variants in a diffusers model folder: None for plain files, "fp16" for `*.fp16.safetensors`,
    sharded indexes (`*.safetensors.index.fp16.json`) included."""
    found: set[str | None] = set()
    for f in folder.iterdir():
        name = f.name
        if name.endswith(".index.json") or name.endswith((".safetensors", ".bin")) and "-of-" not in name:
            stem = name.removesuffix(".index.json").removesuffix(".safetensors").removesuffix(".bin")
            found.add(stem.split(".", 1)[1] if "." in stem else None)
        elif ".index." in name and name.endswith(".json"):  # diffusion_pytorch_model.safetensors.index.fp16.json
            found.add(name.rsplit(".", 2)[-2])
        elif "-of-" in name and name.endswith((".safetensors", ".bin")):  # shard: model.fp16-00001-of-00002...
            stem = name.split("-", 1)[0]
            found.add(stem.split(".", 1)[1] if "." in stem else None)
    return found
