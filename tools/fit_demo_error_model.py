"""Refit the demo's predicted-error model and ship it in `ddit_export/assets/demo/error_model.json`.

Run after retraining the demo (tools/train_demo.py): the model belongs to the shipped adapters. It exports
the demo engines into a temporary folder, runs the static base of every class on seeds 0-3 (the demo's
tuning seeds) with each coarse engine also called on the same latents (`bench/error_model.py`), and
writes the fit atomically.

    python tools/fit_demo_error_model.py            # about 30 s on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch


def main() -> int:
    from ddit_export.bench.error_model import fit_error_model
    from ddit_export.demo.engines import export_demo_engines
    from ddit_export.demo.tuning import ERROR_MODEL
    from ddit_export.pipelines.demo.class_table import demo_conditioning
    from ddit_export.pipelines.demo.classes import CLASS_NAMES
    from ddit_export.runtime.backends import get_backend
    from ddit_export.util.atomic import write_text_atomic

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2,3", help="noise seeds per class (default 0,1,2,3)")
    parser.add_argument("--steps", type=int, default=28)
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        export_demo_engines(Path(tmp) / "engines")
        with get_backend("onnx", Path(tmp) / "engines") as backend:
            samples = [(demo_conditioning(name), seed) for seed in seeds for name in CLASS_NAMES]
            model, record = fit_error_model(backend, samples, args.steps)
    data = {"fitted_on": f"demo engines, static base, {args.steps} steps, seeds {args.seeds} x {len(CLASS_NAMES)} "
                         "classes (tools/fit_demo_error_model.py)", **model.to_json()}
    write_text_atomic(ERROR_MODEL, json.dumps(data, indent=1) + "\n")
    print(f"wrote {ERROR_MODEL}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
