"""The peer's side of `bench --peer` when optimum-onnx lives in its own venv (see `peer_venv`).

    PY -m ddit_export.bench.peer_worker ENGINE_DIR OUT_DIR [--opset N]

Loads the engines' model from their manifest (preset, packaged model or local folder), checks its
weights' sha256 against the manifest's, exports it with optimum-onnx's FLUX config to
OUT_DIR/model.onnx and prints ONE JSON line last on stdout:
``{"ok": true, "file": "OUT_DIR/model.onnx", "versions": {package: version}}`` (exit 0) or
``{"ok": false, "error": "one line"}`` (exit 1). Logs go to stderr. No timing here: the caller loads the
file in its own ONNX Runtime beside our engine.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="peer_worker", description=__doc__.split("\n\n")[0])
    p.add_argument("engine_dir")
    p.add_argument("out_dir")
    p.add_argument("--opset", type=int, default=None)
    args = p.parse_args(argv)
    try:
        reply = export(Path(args.engine_dir), Path(args.out_dir), args.opset)
    except Exception as err:  # the caller gets one line, the trace goes to stderr
        import traceback

        traceback.print_exc(file=sys.stderr)
        print(json.dumps({"ok": False, "error": f"{type(err).__name__}: {err}".splitlines()[0][:500]}), flush=True)
        return 1
    print(json.dumps(reply), flush=True)
    return 0


def export(engine_dir: Path, out_dir: Path, opset: int | None = None) -> dict:
    from importlib import metadata

    import torch

    from ..artifacts.manifest import read_manifest
    from .peer_optimum import PEER_OPSET, _load_base_transformer, export_peer, unavailable_reason

    reason = unavailable_reason()
    if reason:
        raise RuntimeError(reason)
    manifest = read_manifest(engine_dir)
    if manifest["family"] != "flux":
        raise ValueError(f"optimum's peer export is FLUX only (engines are {manifest['family']})")
    out_dir.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        file = export_peer(_load_base_transformer(manifest), out_dir / "model.onnx", opset or PEER_OPSET)
    versions = {}
    for name in ("optimum-onnx", "optimum", "transformers", "huggingface_hub", "diffusers", "torch"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"ok": True, "file": str(file), "versions": versions}


if __name__ == "__main__":
    sys.exit(main())
