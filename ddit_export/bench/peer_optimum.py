"""Peer baseline: the same FLUX transformer exported at the base size by optimum-onnx, timed
side by side with our base engine on ONNX Runtime CPU, and their outputs compared on one step.

optimum-onnx is an optional extra imported lazily. Its release 0.1.0 needs `optimum~=2.1` and
`transformers<4.58` (so huggingface_hub<1.0, so diffusers<0.40); the `[optimum]` extra pins those,
so it goes in a venv of its own (docs/staged.md, "Peer"). Where it does not import here, `peer_latency`
exports the peer in an isolated venv that `peer_venv` creates or reuses, and times it here.

The peer graph takes the stock transformer's inputs (packed tokens, int64 img_ids / txt_ids, RoPE
computed in the graph, dynamic axes); ours takes the latent and has its RoPE tables constant. Both do
the same model work per call (measured: same speed, same prediction), so the comparison is what our
export costs or buys at the base size on the same runtime.

FLUX only, on purpose: optimum-onnx's export config is FluxTransformer2DModel's, so this module names
the FLUX family itself instead of asking the pipeline registry; other families skip the peer baseline.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

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


def peer_inputs(manifest: dict, seed: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One latent and conditioning at our engines' geometry, for both graphs (values as a pipeline passes
    them: a mid-schedule timestep, guidance 3.5)."""
    fam = family_by_name("flux")
    shape = tuple(manifest["latent_shape"])
    text_len = int(manifest["request"]["text_len"])
    cfg = manifest["model"]["config"]
    gen = torch.Generator().manual_seed(seed)
    latent = torch.randn(shape, generator=gen)
    cond = {
        "encoder_hidden_states": torch.randn((shape[0], text_len, cfg["joint_attention_dim"]), generator=gen),
        "pooled_projections": torch.randn((shape[0], cfg["pooled_projection_dim"]), generator=gen),
        "timestep": torch.full((shape[0],), 0.5 * fam.timestep_scale),
    }
    if cfg.get("guidance_embeds"):
        cond["guidance"] = torch.full((shape[0],), 3.5)
    return latent, cond


def peer_feed(manifest: dict, session, latent: torch.Tensor, cond: dict) -> dict[str, np.ndarray]:
    """The same step as the peer graph takes it: packed base tokens and RoPE ids, each input cast to the
    graph's declared type (optimum exports img_ids / txt_ids as int64; at the base size every id is an
    integer, so the cast is exact)."""
    fam = family_by_name("flux")
    base = int(manifest["base_patch"])
    values = {"hidden_states": fam.pack(latent, base), **cond,
              "img_ids": fam.image_ids(base, tuple(latent.shape)), "txt_ids": fam.text_ids(cond[
                  "encoder_hidden_states"].shape[1])}
    types = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(int32)": np.int32}
    return {i.name: values[i.name].numpy().astype(types[i.type]) for i in session.get_inputs()}


def _load_base_transformer(manifest: dict):
    import torch

    fam = family_by_name(manifest["family"])
    transformer = fam.load(manifest["model"]["id"], torch.float32).eval()
    actual = sha256_tensors(transformer.state_dict())
    if actual != manifest["model"]["weights_sha256"]:
        raise ValueError(f"model '{manifest['model']['id']}' now has other weights than the engines; rebuild them")
    return transformer


def peer_latency(folder, warmup: int = 10, iters: int = 50, work_dir=None, venv=None, isolated: bool | None = None,
                 progress=print) -> dict:
    """Round-robin latency of optimum's base export vs our base engine on ONNX Runtime CPU, and how far
    their outputs are apart on the same weights and inputs.

    The peer graph is exported in this process when optimum-onnx imports here (and ``isolated`` is not
    True), else in the isolated venv of `peer_venv` (``venv``: an explicit path, see `ensure_venv`),
    created or reused. Either way both graphs then run in THIS process's ONNX Runtime.

    Ours is called the way `bench` times every engine (the runtime's `Backend`, either layout: one merged
    engine, or embed -> shared trunk -> head); the peer's session gets the threading options our backend
    gives a large engine (ORT's pool, no spinning), so only the graphs differ."""
    import onnxruntime as ort

    from ..runtime.backends import get_backend
    from ..runtime.backends.ort_cpu_threading import session_options
    from . import peer_venv

    reason = unavailable_reason()
    if isolated is None:
        isolated = reason is not None or venv is not None
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest["family"] != "flux":
        return {"skipped": f"optimum's peer export is FLUX only (engines are {manifest['family']})"}
    if manifest["dtype"] != "fp32":
        return {"skipped": "peer timing compares fp32 graphs on ONNX Runtime; export fp32 engines"}
    if not engine_entries(manifest, "onnx"):
        return {"skipped": "the folder has no ONNX engines to set beside optimum's"}
    if not isolated and reason:
        return {"skipped": reason}
    base = int(manifest["base_patch"])
    fam = family_by_name("flux")
    latent, cond = peer_inputs(manifest)
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        if isolated:
            try:
                env_dir = peer_venv.ensure_venv(venv, progress=progress)
                progress(f"exporting the peer with optimum-onnx in {env_dir}")
                reply = peer_venv.run_worker(env_dir, folder, Path(tmp) / "peer", PEER_OPSET)
            except peer_venv.PeerVenvError as err:
                return {"skipped": str(err)}
            peer_file, where = Path(reply["file"]), {"mode": "venv", "venv": str(env_dir),
                                                     "versions": reply.get("versions", {})}
        else:
            with torch.no_grad():
                peer_file = export_peer(_load_base_transformer(manifest), Path(tmp) / "peer" / "model.onnx")
            where = {"mode": "in-process"}
        ours = get_backend("onnx", folder, device="cpu")
        try:
            peer = ort.InferenceSession(str(peer_file), session_options("pool"), providers=["CPUExecutionProvider"])
            peer_bytes = sum(f.stat().st_size for f in peer_file.parent.iterdir())
            feed = peer_feed(manifest, peer, latent, cond)
            calls = {"optimum-onnx base": lambda: peer.run(None, feed)[0],
                     "ddit-export base": lambda: ours(base, latent, **cond)}
            samples = {name: [] for name in calls}
            watch = Stopwatch("cpu")  # ORT runs synchronously from the caller's view
            with torch.no_grad():
                outputs = {name: call() for name, call in calls.items()}
                for _ in range(max(warmup - 1, 0)):
                    for call in calls.values():
                        call()
                for r in range(iters):
                    for name in rotated(list(calls), r):
                        watch.start()
                        calls[name]()
                        samples[name].append(watch.stop())
            peer_inputs_desc = [f"{i.name} {i.type[7:-1]} {i.shape}" for i in peer.get_inputs()]
        finally:
            ours.close()
    theirs = fam.unpack(torch.from_numpy(np.asarray(outputs["optimum-onnx base"], np.float32)), base,
                        tuple(latent.shape)).double().flatten()
    mine = torch.as_tensor(outputs["ddit-export base"]).double().flatten()
    rows = [{"name": name, **summarize(s)} for name, s in samples.items()]
    return {"providers": ["CPUExecutionProvider"], "layout": manifest.get("layout", "single"), "rows": rows,
            "ours_vs_peer": rows[0]["mean_ms"] / rows[1]["mean_ms"],
            "max_abs_err": float((mine - theirs).abs().max()),
            "cosine": float(torch.nn.functional.cosine_similarity(mine, theirs, dim=0)),
            "peer_inputs": peer_inputs_desc, "peer_file_bytes": peer_bytes, "peer_export": where}
