"""The run's output folder: the adapter pack at its top, `train_log.json`, `checkpoints/` beside them.

    OUT/adapters.json, OUT/adapters.safetensors   the pack `ddit-export {flux,wan} --adapters OUT` reads
    OUT/train_log.json                            loss per step (total and per size), seconds
    OUT/checkpoints/step-N/                       see checkpoint.py
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ..ddit.adapter_pack import META, WEIGHTS, save_adapter_pack
from .checkpoint import CHECKPOINTS, list_checkpoints

TRAIN_LOG = "train_log.json"
OURS = {META, WEIGHTS, TRAIN_LOG, CHECKPOINTS}


def prepare_out(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to mix runs: a used OUT needs `--resume` (continue) or `--overwrite` (start over)."""
    if not out.exists():
        if resume:
            raise ValueError(f"--resume: {out} does not exist, so there is no checkpoint to continue from")
        return
    names = {p.name for p in out.iterdir() if not p.name.startswith(".")}
    foreign = sorted(names - OURS)
    if foreign:
        raise ValueError(f"--out {out} holds files that are not a training run's ({', '.join(foreign[:3])}); "
                         "choose another --out")
    if resume:
        if not list_checkpoints(out):
            raise ValueError(f"--resume: {out} holds no checkpoint (checkpoints/step-N); "
                             "train with --checkpoint-every N to make them, or drop --resume")
        return
    if names and not overwrite:
        raise ValueError(f"--out {out} already holds a training run; pass --resume to continue it "
                         "or --overwrite to start over")
    for name in names:
        target = out / name
        shutil.rmtree(target) if target.is_dir() else target.unlink()


def publish_pack(model, out: Path, base_model: str) -> None:
    """Write the pack at the top of OUT without touching `checkpoints/` beside it.

    `save_adapter_pack` replaces its whole target folder, so it writes into a staging folder in OUT
    and the two files are moved up, weights first: a reader finding the new JSON finds new weights.
    """
    staging = out / ".pack-staging"
    save_adapter_pack(model, staging, base_model=base_model)
    try:
        os.replace(staging / WEIGHTS, out / WEIGHTS)
        os.replace(staging / META, out / META)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_json_atomic(path: Path, data) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def write_train_log(out: Path, log: dict) -> Path:
    write_json_atomic(out / TRAIN_LOG, log)
    return out / TRAIN_LOG
