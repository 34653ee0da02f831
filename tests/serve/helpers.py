"""Demo engines for the serving tests: batch 1 and its batch-4 variant, exported once per test process."""

from __future__ import annotations

import tempfile
from dataclasses import replace
from functools import lru_cache
from pathlib import Path

import torch

VARIANT_BATCH = 4  # three concurrent requests pad to it, five split into 4 + 1


@lru_cache(maxsize=1)
def demo_engine_folders() -> tuple[Path, Path]:
    """(batch-1 folder, batch-4 folder); the variant is made by `batch_variant`, as `ddit-export serve` does."""
    from ddit_export.demo.engines import demo_request
    from ddit_export.export.build import export_engines
    from ddit_export.serve.batch_engines import batch_variant

    root = Path(tempfile.mkdtemp(prefix="ddit-serve-tests-"))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        solo = root / "demo"
        export_engines(replace(demo_request(solo)))
        return solo, batch_variant(solo, VARIANT_BATCH)
    finally:
        torch.set_num_threads(before)
