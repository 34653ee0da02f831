"""Peer baseline: the same FLUX transformer exported at the base size by optimum-onnx, timed
side by side with our base engine on ONNX Runtime (same providers, same session options).

optimum-onnx is an optional extra (`pip install 'ddit-export[optimum]'`) and is imported lazily.
Its release 0.1.0 needs `optimum~=2.1` and `transformers<4.58`; with transformers 5.x it fails at
import (`get_parameter_dtype` is gone), so `unavailable_reason` reports that instead of a trace.

The peer graph takes the stock transformer's inputs (packed tokens, img_ids / txt_ids, RoPE
computed in the graph); ours takes the latent and has RoPE folded in. Both do the same model work
per call, so the comparison is what our export (static shapes, folded constants) buys on the
same runtime.

FLUX only, on purpose: optimum-onnx's export config is FluxTransformer2DModel's, so this module names
the FLUX family itself instead of asking the pipeline registry; other families skip the peer baseline.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from ..artifacts.manifest import engine_entries, read_manifest, sha256_tensors
from ..families.registry import family_by_name
from .timing import Stopwatch, rotated, summarize

PEER_OPSET = 18  # optimum's FLUX config default range; any opset ORT runs is fine for timing


def unavailable_reason() -> str | None:
    """None when optimum-onnx's exporter imports, else why not (one line)."""
    try:
        from optimum.exporters.onnx.convert import export  # noqa: F401
        from optimum.exporters.tasks import TasksManager  # noqa: F401
    except ImportError as err:
        return (f"optimum-onnx is not usable here ({err}); install the extra `ddit-export[optimum]` "
                "(optimum-onnx 0.1.0 needs transformers<4.58)")
    return None


def export_peer(transformer, out_file: Path, opset: int = PEER_OPSET) -> Path:
    """Export ``transformer`` (a FluxTransformer2DModel) with optimum's FLUX ONNX config."""
    from optimum.exporters.onnx.convert import export
    from optimum.exporters.tasks import TasksManager

    constructor = TasksManager.get_exporter_config_constructor(
        model=transformer, exporter="onnx", library_name="diffusers", task="semantic-segmentation",
        model_type="flux-transformer-2d",
    )
    config = constructor(transformer.config, int_dtype="int64", float_dtype="fp32")
    export(transformer, config, out_file, opset=opset)
    return out_file


def peer_feed(manifest: dict, session, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs at our engines' geometry for the peer graph (dynamic axes made concrete)."""
    fam = family_by_name("flux")
    shape = tuple(manifest["latent_shape"])
    base, text_len = int(manifest["base_patch"]), int(manifest["request"]["text_len"])
    cfg = manifest["model"]["config"]
    rng = np.random.default_rng(seed)
    tokens = fam.tokens(shape, base)
    values = {
        "hidden_states": rng.standard_normal((shape[0], tokens, fam.patch_features(base, shape[1]))),
        "encoder_hidden_states": rng.standard_normal((shape[0], text_len, cfg["joint_attention_dim"])),
        "pooled_projections": rng.standard_normal((shape[0], cfg["pooled_projection_dim"])),
        "timestep": np.full((shape[0],), 0.5),
        "guidance": np.full((shape[0],), 3.5),
        "img_ids": fam.image_ids(base, shape).numpy(),
        "txt_ids": fam.text_ids(text_len).numpy(),
    }
    return {i.name: values[i.name].astype(np.float32) for i in session.get_inputs()}


def _load_base_transformer(manifest: dict):
    import torch

    fam = family_by_name(manifest["family"])
    transformer = fam.load(manifest["model"]["id"], torch.float32).eval()
    actual = sha256_tensors(transformer.state_dict())
    if actual != manifest["model"]["weights_sha256"]:
        raise ValueError(f"model '{manifest['model']['id']}' now has other weights than the engines; rebuild them")
    return transformer


def peer_latency(folder, warmup: int = 10, iters: int = 50, providers=("CPUExecutionProvider",),
                 work_dir=None) -> dict:
    """Round-robin latency of optimum's base export vs our base ONNX engine (ORT, same options)."""
    import onnxruntime as ort
    import torch

    reason = unavailable_reason()
    if reason:
        return {"skipped": reason}
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest["family"] != "flux":
        return {"skipped": f"optimum's peer export is FLUX only (engines are {manifest['family']})"}
    if manifest["dtype"] != "fp32":
        return {"skipped": "peer timing compares fp32 graphs on ONNX Runtime; export fp32 engines"}
    base = int(manifest["base_patch"])
    ours_file = folder / engine_entries(manifest, "onnx")[base]["files"][0]
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        with torch.no_grad():
            peer_file = export_peer(_load_base_transformer(manifest), Path(tmp) / "peer" / "model.onnx")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        sessions = {"optimum-onnx base": ort.InferenceSession(str(peer_file), options, providers=list(providers)),
                    "ddit-export base": ort.InferenceSession(str(ours_file), options, providers=list(providers))}
        from ..artifacts.iospec import IOSpec, random_feed

        feeds = {"optimum-onnx base": peer_feed(manifest, sessions["optimum-onnx base"]),
                 "ddit-export base": random_feed(IOSpec.from_json(manifest["io"]), seed=0)}
        samples = {name: [] for name in sessions}
        watch = Stopwatch("cpu")  # ORT runs synchronously from the caller's view with numpy feeds
        for _ in range(warmup):
            for name, session in sessions.items():
                session.run(None, feeds[name])
        for r in range(iters):
            for name in rotated(list(sessions), r):
                watch.start()
                sessions[name].run(None, feeds[name])
                samples[name].append(watch.stop())
    rows = [{"name": name, **summarize(s)} for name, s in samples.items()]
    ours, peer = rows[1]["mean_ms"], rows[0]["mean_ms"]
    return {"providers": list(providers), "rows": rows, "ours_vs_peer": peer / ours}
