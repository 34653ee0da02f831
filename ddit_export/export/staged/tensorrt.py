"""TensorRT for the staged layout: the trunk's optimisation profiles and the build + validation stage.

Plan names: artifacts/tensorrt_plans.py.

- embed and head of every size: static plans, as single engines (`tensorrt.build_plan`);
- the trunk: ONE plan from the dynamic-token trunk graph with one optimisation profile per size,
  min = opt = max = that size's shapes, so each size is tuned as a static engine while the plan
  (and so the device) holds the block weights once (`build_plan(..., profiles=trunk_profiles(...))`).
`trt_stage` builds the plans from the product-dtype graphs and validates each part of each size in
Polygraphy's `TrtRunner` (the trunk under that size's profile) against its torch module, then the
chain by running the three runners in sequence. TensorRT itself is imported only inside `trt_stage`.
"""

from __future__ import annotations

import time
from collections import OrderedDict

from polygraphy.backend.base import BaseRunner

from ...artifacts.layouts import TRUNK_ONNX, TRUNK_PLAN, onnx_relpath, part_plan_relpath
from ...artifacts.manifest import sha256_file
from ...artifacts.tensorrt_plans import TIMING_CACHE, device_signature, require_tensorrt, resolve_axis
from ..tensorrt import build_plan
from ..validate import compare_with_torch, require_valid
from .validate import tensor_metadata


def trunk_profiles(trunk_io: dict, sizes: list[int], tokens: dict[int, int], text_len: int) -> list:
    """One Polygraphy `Profile` per size: every input's shape with the symbolic token axis resolved."""
    from polygraphy.backend.trt import Profile

    profiles = []
    for p in sizes:
        profile = Profile()
        for tensor in trunk_io["inputs"]:
            shape = tuple(resolve_axis(d, tokens[p], text_len) for d in tensor["shape"])
            profile.add(tensor["name"], min=shape, opt=shape, max=shape)
        profiles.append(profile)
    return profiles


class _ChainRunner(BaseRunner):
    """embed -> trunk -> head TrtRunners of one size, values passed by name."""

    def __init__(self, runners: list, metadata, output: str = "prediction"):
        super().__init__(name="tensorrt-chain", prefix="staged-chain")
        self.runners, self.metadata, self.output = runners, metadata, output

    def activate_impl(self):
        for r in self.runners:
            r.activate()

    def deactivate_impl(self):
        for r in self.runners:
            r.deactivate()

    def get_input_metadata_impl(self):
        return self.metadata

    def infer_impl(self, feed_dict):
        start = time.perf_counter()
        values = dict(feed_dict)
        for runner in self.runners:
            names = list(runner.get_input_metadata().keys())
            values.update(runner.infer({n: values[n] for n in names}))
        self.inference_time = time.perf_counter() - start
        return OrderedDict([(self.output, values[self.output])])


def trt_stage(staged, req, tmp, onnx_entries: list[dict], values: dict, tolerances: dict, reporter) -> list[dict]:
    """Per size a `trt` entry (files: embed, trunk, head plans); raises ValidationError on a mismatch."""
    require_tensorrt()
    from polygraphy.backend.common import BytesFromPath
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    started, signature = time.perf_counter(), device_signature()
    version, cache = signature["tensorrt"], tmp / TIMING_CACHE
    sizes = staged.sizes
    tokens = {e["patch_size"]: e["tokens"] for e in onnx_entries}
    trunk_rel = TRUNK_PLAN.format(version=version)
    reporter.stage(sizes[0], "trt: build trunk (one profile per size)")
    profiles = trunk_profiles(onnx_entries[0]["parts_io"]["trunk"], sizes, tokens, staged.text_len)
    # refittable: a user LoRA replaces the trunk's weights in place (runtime/backends/staged/tensorrt.py)
    build_plan(tmp / TRUNK_ONNX, tmp / trunk_rel, cache, profiles=profiles, refittable=True)
    module = staged.cuda()
    entries = []
    for index, p in enumerate(sizes):
        reporter.stage(p, "trt: build and validate")
        files = [part_plan_relpath("embed", p, version), trunk_rel, part_plan_relpath("head", p, version)]
        for part, rel in (("embed", files[0]), ("head", files[2])):
            build_plan(tmp / onnx_relpath(part, p), tmp / rel, cache)
        feeds = {k: v.cuda() for k, v in values[p].items()}
        results, runners = {}, []
        for part, rel in zip(("embed", "trunk", "head"), files):
            loader = EngineFromBytes(BytesFromPath(str(tmp / rel)))
            runner = TrtRunner(loader, optimization_profile=index if part == "trunk" else None, name=f"trt-{part}")
            part_module, names, outputs = module.part_callables(p)[part]
            inputs = {n: feeds[n] for n in names}
            result = compare_with_torch(runner, part_module, inputs, inputs, outputs, f"tensorrt {version}",
                                        **tolerances)
            results[part] = require_valid(result, f"patch size {p} {part} (TensorRT)").to_json()
            runners.append(TrtRunner(loader, optimization_profile=index if part == "trunk" else None))
        chain_inputs = {n: feeds[n] for n in module.part_callables(p)["embed"][1]}

        def reference(patch=p, **kw):
            return module(patch, kw.pop("latent"), **kw)

        chain = _ChainRunner(runners, tensor_metadata(chain_inputs))
        result = require_valid(compare_with_torch(chain, reference, chain_inputs, chain_inputs, ["prediction"],
                                                  f"tensorrt {version} (embed -> trunk -> head)", **tolerances),
                               f"patch size {p} chain (TensorRT)")
        entries.append({
            "patch_size": p, "backend": "trt", "layout": "staged", "files": files,
            "sha256": [sha256_file(tmp / f) for f in files], "bytes": sum((tmp / f).stat().st_size for f in files),
            "tokens": tokens[p], "validation": {**result.to_json(), "validated_as": req.dtype, "parts": results},
            "export_seconds": round(time.perf_counter() - started, 3), **signature,
        })
    return entries

