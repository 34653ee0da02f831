"""Training checkpoints: `OUT/checkpoints/step-N/` with everything a resumed run needs.

    adapters/        the adapter pack at step N (what `--adapters` consumes, usable on its own)
    optimizer.pt     optimizer state (moments, Prodigy's estimates)
    rng.pt           torch / numpy / python RNG states (sampling itself is seeded per position)
    state.json       step, stream position (samples consumed), the loss log so far, the run identity

A checkpoint is written into a temporary folder and renamed into place, so a crash while saving
never leaves a half checkpoint that `--resume` would pick.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from ..ddit.adapter_pack import load_adapter_pack, save_adapter_pack
from ..util.atomic import atomic_folder

CHECKPOINTS = "checkpoints"
STEP_FOLDER = re.compile(r"^step-(\d+)$")


def checkpoints_dir(out) -> Path:
    return Path(out) / CHECKPOINTS


def list_checkpoints(out) -> list[tuple[int, Path]]:
    """Complete checkpoints in `out`, oldest first (temporary folders never match the name)."""
    folder = checkpoints_dir(out)
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = STEP_FOLDER.match(path.name)
        if match and (path / "state.json").is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def newest_checkpoint(out) -> Path | None:
    found = list_checkpoints(out)
    return found[-1][1] if found else None


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(out, step: int, model, optimizer, state: dict, base_model: str, keep: int) -> Path:
    target = checkpoints_dir(out) / f"step-{step}"
    with atomic_folder(target, replace=True) as tmp:
        save_adapter_pack(model, tmp / "adapters", base_model=base_model)
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(rng_state(), tmp / "rng.pt")
        (tmp / "state.json").write_text(json.dumps({**state, "step": step}, indent=1))
    for _, old in list_checkpoints(out)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def read_state(path) -> dict:
    return json.loads((Path(path) / "state.json").read_text())


def load_checkpoint(path, model, optimizer) -> dict:
    """Restore adapters, optimizer and RNG from checkpoint `path` into a freshly built run; return its state."""
    path = Path(path)
    load_adapter_pack(model, path / "adapters")
    device = next(model.parameters()).device
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location=device, weights_only=True))
    set_rng_state(torch.load(path / "rng.pt", weights_only=False))  # our own file: numpy's state is a pickle
    return read_state(path)
