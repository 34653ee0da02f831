"""Two DDiT configurations on the same seeds, compared pair by pair: is one really better than the other?

Two intervals that overlap do not say that two configurations are level: sample i of both shares its
class and noise seed, so most of what moves one's FD or accuracy between seed sets moves the other's too.
The paired difference resamples the N seeds once for both (and the real reference set, for FD), so its
95% interval is that of the difference itself, usually much narrower than either figure's own
(bench/bootstrap.py says how the intervals are made).

Used twice: `tools/demo_quality_eval.py` compares every fixed schedule with the rule of one run, and
`tools/compare_quality_runs.py` compares two runs on the same seeds and base (e.g. two adapter packs)
from the per-sample scores `demo_quality_eval.py --scores` saves.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..bench.bootstrap import bootstrap_ci, psnr_of_mse
from ..bench.quality import frechet_distance

# figure -> True when higher is better (the sign a difference must have to say "better")
HIGHER_IS_BETTER = {"fd_ddit": False, "accuracy_ddit": True, "psnr_db": True}


@dataclass(frozen=True)
class Scored:
    """One configuration's N samples as the comparisons need them (row i: seed + i, classes in turn)."""

    right: np.ndarray  # 0/1: the classifier names the sample's class
    feats: np.ndarray  # N x D classifier features (what FD is computed on)
    mse: np.ndarray  # per-sample mean squared error to the static base's image of the same seed


def score(classifier, images: torch.Tensor, labels: torch.Tensor, base_images: torch.Tensor) -> Scored:
    with torch.no_grad():
        feats = classifier.features(images)
        right = (classifier.head(feats).argmax(1) == labels).numpy()
    mse = ((images.double() - base_images.double()) ** 2).flatten(1).mean(1).numpy()
    return Scored(right.astype(np.int8), feats.double().numpy(), mse)


def paired_difference(a: Scored, b: Scored, real, **options) -> dict:
    """``b`` minus ``a`` in FD to real, accuracy and PSNR, each with the 95% interval of the difference.

    ``better[key]``: "b" or "a" where the interval lies wholly on one side of 0, else "neither"
    (FD: lower is better)."""
    if len(a.right) != len(b.right):
        raise ValueError(f"a paired comparison needs the same samples on both sides (got {len(a.right)} "
                         f"and {len(b.right)})")
    fr = np.asarray(torch.as_tensor(real).double().numpy())

    def differences(i, j):
        fd = frechet_distance(b.feats[i], fr[j]) - frechet_distance(a.feats[i], fr[j])
        accuracy = b.right[i].mean() - a.right[i].mean()
        psnr = psnr_of_mse(float(b.mse[i].mean())) - psnr_of_mse(float(a.mse[i].mean()))
        return fd, accuracy, psnr

    point = differences(np.arange(len(a.right)), np.arange(len(fr)))
    intervals = bootstrap_ci(differences, (len(a.right), len(fr)), **options)
    out: dict = {"samples": len(a.right), "better": {}}
    for key, value, ci in zip(HIGHER_IS_BETTER, point, intervals):
        out[key], out[f"{key}_ci"] = float(value), ci
        out["better"][key] = _side(ci, HIGHER_IS_BETTER[key])
    return out


def _side(ci: list[float], higher_is_better: bool) -> str:
    lo, hi = ci
    if lo > 0:
        return "b" if higher_is_better else "a"
    if hi < 0:
        return "a" if higher_is_better else "b"
    return "neither"


def save_scores(path: Path, *, seeds: list[int], labels, base: Scored, rows: dict[str, Scored], real) -> None:
    """Every row's per-sample scores and the base's, as one .npz (written whole, then renamed into place)."""
    from ..util.atomic import atomic_file

    arrays = {"seeds": np.asarray(seeds), "labels": np.asarray(labels), "real": np.asarray(real, dtype=float),
              "rows": np.asarray(list(rows))}
    for i, scored in enumerate([base, *rows.values()]):
        prefix = "base" if i == 0 else f"row{i - 1}"
        arrays |= {f"{prefix}_right": scored.right, f"{prefix}_feats": scored.feats, f"{prefix}_mse": scored.mse}
    with atomic_file(path) as tmp:
        with open(tmp, "wb") as f:  # a file object: np.savez would otherwise add ".npz" to the temporary name
            np.savez_compressed(f, **arrays)


def load_scores(path: Path) -> dict:
    """{"seeds", "labels", "real", "base": Scored, "rows": {name: Scored}} from save_scores' file."""
    with np.load(path, allow_pickle=False) as z:
        def scored(prefix):
            return Scored(z[f"{prefix}_right"], z[f"{prefix}_feats"], z[f"{prefix}_mse"])

        return {"seeds": z["seeds"].tolist(), "labels": z["labels"], "real": z["real"], "base": scored("base"),
                "rows": {str(name): scored(f"row{i}") for i, name in enumerate(z["rows"].tolist())}}
