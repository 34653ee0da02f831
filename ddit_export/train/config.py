"""What a distillation run is asked to do, checked before anything heavy happens."""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..families.registry import family_by_name
from ..pipelines.registry import image_training_families, teacher_pipeline
from ..util import limits
from .optim import LR_SCHEDULES

TRAIN_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
OPTIMIZERS = ("adamw", "prodigy")
DEFAULT_LR = {"adamw": 1e-4, "prodigy": 1.0}  # the paper's Wan (AdamW) and FLUX (Prodigy) settings
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def default_dtype() -> str:
    """bf16 on a GPU (half the memory of the frozen backbone); fp32 on a CPU, whose bf16 matmuls are emulated on
    most processors: slower than fp32 and less precise."""
    return "bf16" if torch.cuda.is_available() else "fp32"


@dataclass
class TrainConfig:
    out: str
    family: str = "flux"
    model: str | None = None  # None: the family's default model
    patch_sizes: tuple[int, ...] = (2, 4, 8)
    # data: exactly one of images / prompts / prompt_embeds
    images: str | None = None
    vae: str | None = None
    prompts: str | None = None
    prompt_embeds: str | None = None
    teacher_steps: int | None = None  # None: the family pipeline's default steps
    draws_per_prompt: int = 1  # trajectories per prompt, each from its own noise seed (trajectories.py)
    guidance: float | None = None  # FLUX: embedded guidance (3.5); Wan: CFG scale of the trajectories (1 = off)
    height: int | None = None  # None: the family's default size
    width: int | None = None
    frames: int | None = None  # video families only (Wan: 4k+1; default 81)
    text_len: int | None = None
    # optimisation
    steps: int = 1000
    batch_size: int = 1
    seed: int = 0
    lora_rank: int = 32
    init_adapters: str | None = None  # start from this adapter pack (e.g. after fine-tuning the base)
    optimizer: str = "adamw"
    lr: float | None = None
    lr_schedule: str = "constant"  # or "cosine" (warm-up, then decay to 10%): train/optim.py
    weight_decay: float = 0.0  # decay would pull the PI-resize init towards zero, away from the teacher
    dtype: str | None = None  # None: bf16 where CUDA runs the training, fp32 on a CPU (default_dtype)
    gradient_checkpointing: bool = False
    # what the student learns from (docs/method.md, Distillation recipe)
    student_states: float = 0.0  # share of samples from the student's own DDiT rollouts (rollouts.py); 0 = teacher only
    rollout_every: int | None = None  # refresh the student rollouts every N steps (None: --steps // 4)
    size_weights: dict[int, float] | None = None  # loss weight per extra size (None: 1 each)
    spectral_weight: float = 0.0  # weight of the spectral term (spectrum.py); 0 = velocity MSE only
    validation_share: float = 0.0  # share of the prompts held out of training, their loss logged (validation.py)
    # run management
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    resume: bool = False
    overwrite: bool = False

    def __post_init__(self):
        self.patch_sizes = tuple(sorted(set(int(p) for p in self.patch_sizes)))
        fam = family_by_name(self.family)
        pipeline = teacher_pipeline(fam)
        self.model = self.model or fam.default_model
        geometry = fam.defaults.geometry(self.model)  # `tiny` trains at its small default size
        # `is None`, not `or`: a height of 0 is a mistake to refuse, not a request for the default.
        self.height = geometry["height"] if self.height is None else limits.check_int(self.height, "--height",
                                                                                      high=limits.MAX_SIDE)
        self.width = geometry["width"] if self.width is None else limits.check_int(self.width, "--width",
                                                                                   high=limits.MAX_SIDE)
        self.frames = geometry["frames"] if self.frames is None else self.frames
        self.teacher_steps = pipeline.default_steps if self.teacher_steps is None else self.teacher_steps
        self.guidance = pipeline.default_guidance if self.guidance is None else float(self.guidance)
        if self.text_len is None:
            self.text_len = fam.default_text_len
        if self.dtype is None:
            self.dtype = default_dtype()
        if self.rollout_every is None:
            self.rollout_every = max(1, self.steps // 4)
        if self.size_weights is not None:
            self.size_weights = {int(k): float(v) for k, v in self.size_weights.items()}
        if self.lr is None and self.optimizer in DEFAULT_LR:
            self.lr = DEFAULT_LR[self.optimizer]
        self._check(fam)

    def _check(self, fam) -> None:
        if self.dtype not in TRAIN_DTYPES:
            raise ValueError(f"--dtype must be one of {', '.join(TRAIN_DTYPES)} (got {self.dtype})")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"--lr-schedule must be one of {', '.join(LR_SCHEDULES)} (got {self.lr_schedule})")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"--optimizer must be one of {', '.join(OPTIMIZERS)} (got {self.optimizer})")
        positive = {"--steps": self.steps, "--batch-size": self.batch_size, "--lora-rank": self.lora_rank,
                    "--teacher-steps": self.teacher_steps, "--text-len": self.text_len,
                    "--keep-checkpoints": self.keep_checkpoints, "--draws-per-prompt": self.draws_per_prompt}
        for flag, value in positive.items():
            if value < 1:
                raise ValueError(f"{flag} must be at least 1 (got {value})")
        if not 0.0 <= self.student_states < 1.0:
            raise ValueError(f"--student-states is a share of the samples, 0 <= F < 1 (got {self.student_states})")
        if not 0.0 <= self.spectral_weight < float("inf"):
            raise ValueError(f"--spectral-weight must be a finite number >= 0 (got {self.spectral_weight})")
        if not 0.0 <= self.validation_share < 1.0:
            raise ValueError(f"--validation-share is a share of the prompts, 0 <= F < 1 (got {self.validation_share})")
        if self.rollout_every < 1:
            raise ValueError(f"--rollout-every must be at least 1 (got {self.rollout_every})")
        if self.draws_per_prompt > 1 and self.images:
            raise ValueError("--draws-per-prompt samples the teacher again from new noise: it needs --prompts or "
                             "--prompt-embeds (an image folder's latents are the images')")
        if self.student_states and self.images:
            raise ValueError("--student-states needs trajectories (--prompts or --prompt-embeds): an image folder "
                             "has no sampling trajectory for the student to roll out")
        if self.size_weights is not None:
            extra = set(self.patch_sizes) - {fam.base_patch}
            if set(self.size_weights) != extra or min(self.size_weights.values()) < 0 or not any(
                    self.size_weights.values()):
                raise ValueError(f"--size-weights needs one non-negative weight per trained size "
                                 f"{','.join(map(str, sorted(extra)))}, not all zero, e.g. "
                                 f"{','.join(f'{p}=1' for p in sorted(extra))} (got {self.size_weights})")
        if self.checkpoint_every < 0:
            raise ValueError(f"--checkpoint-every must be 0 (off) or positive (got {self.checkpoint_every})")
        if self.optimizer == "prodigy" and importlib.util.find_spec("prodigyopt") is None:
            raise ValueError("--optimizer prodigy needs the prodigyopt package (`pip install prodigyopt`); "
                             "or use --optimizer adamw")
        if not self.lr > 0:
            raise ValueError(f"--lr must be positive (got {self.lr})")
        if self.init_adapters and not (Path(self.init_adapters) / "adapters.json").is_file():
            raise ValueError(f"--init-adapters {self.init_adapters}: not an adapter pack (no adapters.json in it)")
        if self.resume and self.overwrite:
            raise ValueError("--resume continues the run in --out and --overwrite discards it: pass one of them")
        fam.check_image_size(self.height, self.width, self.frames)
        self._check_patch_sizes(fam)
        if self.images and not teacher_pipeline(fam).trains_on_images:
            raise ValueError(f"--images is for {', '.join(image_training_families())} only: {self.family} trains "
                             "data-free on its own sampling trajectories (--prompts FILE or --prompt-embeds FILE)")
        self._check_data()
        if Path(self.out).exists() and not Path(self.out).is_dir():
            raise ValueError(f"--out {self.out} exists and is not a folder")

    def _check_patch_sizes(self, fam) -> None:
        fam.check_patch_sizes(list(self.patch_sizes), self.latent_shape())  # sizes beyond the grid included
        if len(self.patch_sizes) < 2:
            raise ValueError(f"nothing to train: give the base size and at least one larger size, "
                             f"e.g. --patch-sizes {fam.base_patch},{2 * fam.base_patch}")

    def _check_data(self) -> None:
        sources = [flag for flag, value in (("--images", self.images), ("--prompts", self.prompts),
                                            ("--prompt-embeds", self.prompt_embeds)) if value]
        if len(sources) != 1:
            raise ValueError("give exactly one data source: --images DIR (with --vae), --prompts FILE or "
                             f"--prompt-embeds FILE.safetensors (got {', '.join(sources) or 'none'})")
        if self.images:
            folder = Path(self.images).expanduser()
            if not folder.is_dir():
                raise ValueError(f"--images {self.images} is not a folder")
            if not any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir()):
                raise ValueError(f"--images {self.images} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        for flag, value in (("--prompts", self.prompts), ("--prompt-embeds", self.prompt_embeds),
                            ("--vae", self.vae)):
            if value and not Path(value).expanduser().exists():
                raise ValueError(f"{flag} {value} does not exist")
        if self.validation_share and self.prompts:  # refused here, before the model loads and the teacher samples
            from .prompts import read_prompts
            from .validation import held_out_count

            held_out_count(len(read_prompts(self.prompts)), self.validation_share)

    @property
    def family_obj(self):
        return family_by_name(self.family)

    @property
    def torch_dtype(self) -> torch.dtype:
        return TRAIN_DTYPES[self.dtype]

    def latent_shape(self, latent_channels: int | None = None) -> tuple[int, ...]:
        """One sample's latent at this run's size; `latent_channels`: the loaded model's (None: the family's)."""
        return tuple(self.family_obj.latent_shape(1, self.height, self.width, self.frames, latent_channels))

    @property
    def out_dir(self) -> Path:
        return Path(self.out).expanduser()

    def identity(self) -> dict:
        """What must match for `--resume` to continue a run (`steps` may grow, checkpointing may change)."""
        keep = ("family", "model", "patch_sizes", "teacher_steps", "guidance", "height", "width", "frames", "text_len",
                "batch_size", "seed", "lora_rank", "optimizer", "lr", "lr_schedule", "weight_decay", "dtype")
        ident = {k: v for k, v in asdict(self).items() if k in keep}
        # The recipe options only when used, so checkpoints from before they existed still resume.
        if self.student_states:
            ident.update(student_states=self.student_states, rollout_every=self.rollout_every)
        if self.validation_share:
            ident["validation_share"] = self.validation_share
        if self.spectral_weight:
            ident["spectral_weight"] = self.spectral_weight
        if self.draws_per_prompt > 1:
            ident["draws_per_prompt"] = self.draws_per_prompt
        if self.size_weights is not None:  # JSON keys are strings: compare like a saved checkpoint's
            ident["size_weights"] = {str(k): v for k, v in sorted(self.size_weights.items())}
        ident["patch_sizes"] = list(self.patch_sizes)
        ident["data"] = self.data_fingerprint()
        return ident

    def data_fingerprint(self) -> str:
        """Hash of the data inputs' names and bytes, so a resumed run trains on the same data."""
        digest = hashlib.sha256()
        for flag, value in (("images", self.images), ("vae", self.vae), ("prompts", self.prompts),
                            ("prompt_embeds", self.prompt_embeds)):
            if not value:
                continue
            path = Path(value).expanduser()
            digest.update(flag.encode())
            files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
            if flag == "vae":
                files = []  # a VAE folder is large; its path is enough to say which one it is
                digest.update(str(path.resolve()).encode())
            for f in files:
                digest.update(f.name.encode())
                digest.update(hashlib.sha256(f.read_bytes()).digest())
        return digest.hexdigest()[:16]
