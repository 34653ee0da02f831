"""Sample the demo engines with the static base and with DDiT, and score both.

Base and DDiT runs of one sample are interleaved (same class, same seed, one after the other), so
drift of a shared machine hits both alike. Time per image is the wall time of the library's
`generate` call: scheduler, engine calls and sampler updates, everything a user waits for.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..bench.end_to_end import schedule_cost
from ..bench.quality import frechet_distance, ssim
from ..pipelines.demo.class_table import demo_conditioning
from ..pipelines.demo.classes import CLASS_NAMES, FLAT_CLASSES, TEXTURED_CLASSES
from ..pipelines.demo.codec import decode
from ..pipelines.registry import generate
from ..runtime.runner import schedule_config
from .classifier import DemoClassifier, load_classifier, score
from .data import sample_batch
from .quality_figures import accuracy_figures, fd_figures, psnr_figures, speed_figures

REAL_SAMPLES = 512  # procedural reference images for the Frechet distance
REAL_SEED = 10_000  # disjoint from anything the demo samples with


@dataclass
class Run:
    """N samples of one configuration (static base, or DDiT at one tau)."""

    images: list[torch.Tensor] = field(default_factory=list)  # each 3 x 32 x 32 in [0, 1]
    seconds: list[float] = field(default_factory=list)
    schedules: list[list[int]] = field(default_factory=list)
    cached: list[list[bool]] = field(default_factory=list)  # per step: served from the step cache

    def add(self, result, seconds: float) -> None:
        self.images.append(decode(result.latent.float())[0])
        self.seconds.append(seconds)
        self.schedules.append(result.trace.schedule)
        self.cached.append(result.trace.cached)

    @property
    def cached_share(self) -> float:
        flat = [c for s in self.cached for c in s]
        return sum(flat) / len(flat) if flat else 0.0

    @property
    def batch(self) -> torch.Tensor:
        return torch.stack(self.images)


def sample_labels(n: int) -> torch.Tensor:
    """Classes in turn, so every class appears (n >= number of classes)."""
    return torch.arange(n) % len(CLASS_NAMES)


def timed_generate(backend, conditioning, config, steps: int, seed: int, cache=None):
    start = time.perf_counter()
    result = generate(backend, conditioning, config, steps=steps, seed=seed, cache=cache)
    return result, time.perf_counter() - start


def warm_up(backend, steps: int = 4) -> None:
    """One short run per engine: ONNX Runtime's first calls allocate and are not representative."""
    cond = demo_conditioning(CLASS_NAMES[0])
    for patch in backend.patch_sizes:
        generate(backend, cond, schedule_config(backend, static_patch=patch), steps=steps, seed=0)


def sample_runs(backend, n: int, steps: int, seed: int, configs: dict, progress=None) -> tuple[Run, dict]:
    """The static base run and one run per ``configs[key] = ScheduleConfig`` (or ``(ScheduleConfig, StepCache)``),
    sample by sample interleaved."""
    base, runs = Run(), {key: Run() for key in configs}
    static = schedule_config(backend, static_patch=backend.base_patch)
    for i, label in enumerate(sample_labels(n).tolist()):
        cond = demo_conditioning(CLASS_NAMES[label])
        base.add(*timed_generate(backend, cond, static, steps, seed + i))
        for key, config in configs.items():
            config, cache = config if isinstance(config, tuple) else (config, None)
            runs[key].add(*timed_generate(backend, cond, config, steps, seed + i, cache))
        if progress:
            progress()
    return base, runs


def real_features(classifier: DemoClassifier) -> torch.Tensor:
    images, labels = sample_batch(REAL_SAMPLES, torch.Generator().manual_seed(REAL_SEED))
    return score(classifier, images, labels)[1]


def histogram(schedules: list[list[int]], sizes) -> dict[str, int]:
    flat = [p for s in schedules for p in s]
    return {str(p): flat.count(p) for p in sizes}


def token_costs(schedules: list[list[int]], tokens: dict[int, int]) -> list[float]:
    """Each schedule's tokens over all steps as a fraction of the all-base schedule's."""
    return [schedule_cost(s, tokens, min(tokens)) for s in schedules]


def correct(classifier: DemoClassifier, images: torch.Tensor, labels: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
    """(per-sample 0/1 correctness, penultimate features) of a batch of images."""
    with torch.no_grad():
        feats = classifier.features(images)
        right = (classifier.head(feats).argmax(1) == labels).numpy()
    return right, feats


def figures(base: Run, ddit: Run, labels: torch.Tensor, classifier: DemoClassifier, real: torch.Tensor,
            sizes, tokens: dict[int, int], base_seconds: list[float] | None = None,
            base_scored: tuple | None = None, ddit_scored: tuple | None = None) -> dict:
    """Every number the demo reports for one DDiT configuration against the static base, the quality
    figures with 95% bootstrap intervals (`*_ci`; demo/quality_figures.py says how each is computed).

    ``base_seconds``: the base's timings when they were taken apart from ``base`` (default its own);
    ``base_scored``: ``correct(classifier, base.batch, labels)`` when several configurations share one base;
    ``ddit_scored``: the same for ``ddit`` when the caller has scored it already.
    """
    right_base, feats_base = base_scored or correct(classifier, base.batch, labels)
    right_ddit, feats_ddit = ddit_scored or correct(classifier, ddit.batch, labels)
    costs = token_costs(ddit.schedules, tokens)
    per_class = {name: [c for c, lab in zip(costs, labels.tolist()) if lab == i] for i, name in enumerate(CLASS_NAMES)}
    per_class = {name: sum(v) / len(v) for name, v in per_class.items() if v}
    flat = [per_class[n] for n in FLAT_CLASSES if n in per_class]
    textured = [per_class[n] for n in TEXTURED_CLASSES if n in per_class]
    return {
        "samples": len(ddit.images),
        "token_cost": sum(costs) / len(costs),
        "token_cost_per_class": per_class,
        "token_cost_flat": sum(flat) / len(flat) if flat else None,
        "token_cost_textured": sum(textured) / len(textured) if textured else None,
        "distinct_schedules": len({tuple(s) for s in ddit.schedules}),
        **speed_figures(base.seconds if base_seconds is None else base_seconds, ddit.seconds),
        **psnr_figures(ddit.batch, base.batch),
        "ssim": ssim(ddit.batch, base.batch),
        **accuracy_figures(right_base, right_ddit),
        **fd_figures(feats_base, feats_ddit, real, labels=labels.numpy()),
        "schedule_histogram": histogram(ddit.schedules, sizes),
        "schedules": ddit.schedules,
    }


def schedule_hooks(manifest: dict) -> dict | None:
    """What `ddit-export schedules` needs to score the demo: its classes as prompts, its codec, its classifier.

    None for engines of any other model.
    """
    from ..pipelines.demo.model import DEMO_MODEL_ID

    if manifest["model"]["id"] != DEMO_MODEL_ID:
        return None
    classifier = load_classifier()
    real = real_features(classifier)

    def score_images(images: torch.Tensor, prompts: list[str]) -> dict:
        labels = torch.tensor([CLASS_NAMES.index(p) for p in prompts])
        accuracy, feats = score(classifier, images, labels)
        return {"accuracy": accuracy, "fd": frechet_distance(feats, real)}

    return {"prompts": list(CLASS_NAMES), "to_images": lambda latent: decode(latent.float()),
            "score": score_images}
