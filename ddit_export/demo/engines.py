"""Export the demo's engines with the library's export flow (ONNX, fp32, sizes 2/4/8, trained adapters)."""

from __future__ import annotations

from pathlib import Path

from ..export.build import export_engines
from ..export.engine_folder import Reporter
from ..export.request import ExportRequest
from ..pipelines.demo.model import ADAPTERS_DIR, DEMO_HEIGHT, DEMO_MODEL_ID, DEMO_TEXT_LEN, DEMO_WIDTH, require
from .tuning import DEMO_RULE, DEMO_SIZES, DEMO_TAU, demo_error_model

DEMO_PATCH_SIZES = (2, 4, 8)
DEFAULT_ENGINE_DIR = Path("engines") / "demo"
DEFAULT_STAGED_DIR = Path("engines") / "demo-staged"  # `ddit-export demo --cache`: step caching needs the staged layout


def demo_request(out: Path, force: bool = False, layout: str = "single",
                 first_block_split: bool = False) -> ExportRequest:
    return ExportRequest(
        family="flux", model=DEMO_MODEL_ID, patch_sizes=DEMO_PATCH_SIZES, adapters=str(require(ADAPTERS_DIR)),
        height=DEMO_HEIGHT, width=DEMO_WIDTH, text_len=DEMO_TEXT_LEN, dtype="fp32", out=str(out), force=force,
        # the demo's tuned schedule, so `generate` on these engines schedules as `ddit-export demo` does
        artifacts=("onnx",), tau=DEMO_TAU, scheduler_sizes=DEMO_SIZES, rule=DEMO_RULE, layout=layout,
        error_model=demo_error_model(), first_block_split=first_block_split,
    )


def export_demo_engines(out: Path = DEFAULT_ENGINE_DIR, force: bool = False, reporter: Reporter | None = None,
                        layout: str = "single", first_block_split: bool = False) -> dict:
    """Build (or reuse, when unchanged) the demo engines in `out`; returns the manifest."""
    return export_engines(demo_request(Path(out), force, layout, first_block_split), reporter)


def demo_engine_folder(path) -> Path:
    """An engine folder a demo tool was given; the default one (engines/demo) is built, or refreshed when the
    shipped model changed, as `ddit-export demo` does; any other folder is used as it is."""
    folder = Path(path).expanduser()
    if folder == DEFAULT_ENGINE_DIR:
        export_demo_engines(folder)
    return folder
