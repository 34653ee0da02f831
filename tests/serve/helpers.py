"""Demo engines for the serving tests: batch 1 and its batch-4 variant, exported once per test process."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from dataclasses import replace
from functools import lru_cache
from pathlib import Path

import torch

VARIANT_BATCH = 4  # three concurrent requests pad to it, five split into 4 + 1


def _scratch_folder(prefix: str) -> Path:
    """A temporary folder removed when the test process exits. These folders outlive any one pytest fixture
    (Ray Serve replicas in other modules read them), so pytest's tmp_path cannot hold them; without the
    clean-up every run left ~40 MB behind in /tmp."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return root


@lru_cache(maxsize=1)
def demo_engine_folders() -> tuple[Path, Path]:
    """(batch-1 folder, batch-4 folder); the variant is made by `batch_variant`, as `ddit-export serve` does."""
    from ddit_export.demo.engines import demo_request
    from ddit_export.export.build import export_engines
    from ddit_export.serve.batch_engines import batch_variant

    root = _scratch_folder("ddit-serve-tests-")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        solo = root / "demo"
        export_engines(replace(demo_request(solo)))
        return solo, batch_variant(solo, VARIANT_BATCH)
    finally:
        torch.set_num_threads(before)


@lru_cache(maxsize=1)
def demo_staged_folder() -> Path:
    """The demo engines in the staged layout (embed / trunk / head per size), which step caching needs, with
    TeaCache's polynomial fitted as `ddit-export demo --cache` fits it."""
    import io

    from rich.console import Console

    from ddit_export.artifacts.manifest import read_manifest
    from ddit_export.commands.demo_cache import _fit_if_missing
    from ddit_export.demo.engines import demo_request
    from ddit_export.export.build import export_engines

    folder = _scratch_folder("ddit-serve-staged-") / "demo-staged"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        export_engines(demo_request(folder, layout="staged"))
        _fit_if_missing(folder, read_manifest(folder), Console(file=io.StringIO()))
        return folder
    finally:
        torch.set_num_threads(before)
