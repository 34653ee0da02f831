"""ONNX Runtime latency cost of a staged trunk split after block 0 (what first-block caching would need).

    python tools/ort_first_block_split_cost.py ENGINE_DIR [--rounds 40] [--prompt "red circle"]

Exports block 0 and blocks 1..N of the folder's staged trunk as two ONNX graphs (token axis symbolic, one
graph for every size, as trunk.onnx) into a temporary folder, checks that block 0 then blocks 1..N give
trunk.onnx's `trunk_tokens`, and times per size the folder's trunk.onnx against the two graphs in a row
(ONNX Runtime CPU, the backend's session options, rounds alternated; medians). Nothing in ENGINE_DIR changes.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from ddit_export.ddit.staged import family_parts
from ddit_export.export.staged.onnx_export import export_dynamic_trunk, trunk_half
from ddit_export.pipelines import make_conditioning
from ddit_export.runtime.backends import get_backend


def session(path: Path, prepack: bool):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not prepack:
        options.add_session_config_entry("session.disable_prepacking", "1")
    s = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return s, [i.name for i in s.get_inputs()], [o.name for o in s.get_outputs()]


def run(sess, values):
    s, inputs, outputs = sess
    return dict(zip(outputs, s.run(outputs, {n: values[n] for n in inputs})))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("engine_dir")
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--prompt", default="red circle")
    args = p.parse_args()
    torch.set_num_threads(1)
    folder = Path(args.engine_dir)
    with get_backend("torch", folder) as b:
        staged, manifest = b.staged, b.manifest
        fp = family_parts(staged.family)
        text_len = int(manifest["request"]["text_len"])
        cond = make_conditioning(manifest, args.prompt).engine_inputs(b.io_spec, b.device, b.dtype)
        latent = torch.randn(b.latent_shape)
        t = torch.full((b.latent_shape[0],), 0.5)
        values = {}
        for patch in b.patch_sizes:
            v = b.run_embed(patch, latent, timestep=t, **cond)
            v = {k: x for k, x in v.items() if isinstance(x, torch.Tensor)}
            v["size_index"] = staged.size_index(patch)
            v.update(dict(zip(("head_tokens", "head_text_tokens"),
                              staged.trunk.first_block(**{n: v[n] for n in fp.TRUNK_INPUTS}))))
            values[patch] = v
        first = b.patch_sizes[0]
        axes = fp.trunk_token_axes(text_len)
        other_axes = {("head_tokens" if k == "tokens" else k): a for k, a in axes.items()}
        prepack = manifest.get("staged", {}).get("onnxruntime", {}).get("prepacking", True)
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            v0 = values[first]
            export_dynamic_trunk(trunk_half(staged.trunk, "first_block", fp.TRUNK_INPUTS),
                                 {n: v0[n] for n in fp.TRUNK_INPUTS},
                                 ["head_tokens", "head_text_tokens"], tmp / "first_block.onnx", axes,
                                 opset=int(manifest["opset"]), external_data=False)
            export_dynamic_trunk(trunk_half(staged.trunk, "other_blocks", fp.OTHER_BLOCKS_INPUTS),
                                 {n: v0[n] for n in fp.OTHER_BLOCKS_INPUTS},
                                 ["trunk_tokens"], tmp / "other_blocks.onnx", other_axes,
                                 opset=int(manifest["opset"]), external_data=False)
            trunk = session(folder / "staged" / "trunk.onnx", prepack)
            head = session(tmp / "first_block.onnx", prepack)
            rest = session(tmp / "other_blocks.onnx", prepack)
            print(f"{folder}: ONNX Runtime {ort.__version__} CPU, 1 intra-op thread, prepacking {prepack}, "
                  f"{args.rounds} alternated rounds, medians")
            for patch in b.patch_sizes:
                feeds = {k: x.detach().cpu().numpy() for k, x in values[patch].items()}
                whole = run(trunk, feeds)["trunk_tokens"]
                split = run(rest, {**feeds, **run(head, feeds)})["trunk_tokens"]
                err = float(np.abs(whole - split).max())
                t_whole, t_split = [], []
                for _ in range(args.rounds):
                    s = time.perf_counter()
                    run(trunk, feeds)
                    t_whole.append(time.perf_counter() - s)
                    s = time.perf_counter()
                    run(rest, {**feeds, **run(head, feeds)})
                    t_split.append(time.perf_counter() - s)
                w, sp = statistics.median(t_whole) * 1e3, statistics.median(t_split) * 1e3
                print(f"p{patch}: trunk {w:.3f} ms, block 0 + blocks 1..N {sp:.3f} ms, split/whole {sp / w:.3f}, "
                      f"max |diff| {err:.2e}")


if __name__ == "__main__":
    main()
