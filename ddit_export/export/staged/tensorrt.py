"""TensorRT for the staged layout: the trunk's optimisation profiles and the build + validation stage.

Plan names: artifacts/tensorrt_plans.py.

- embed and head of every size: static plans, as single engines (`tensorrt.build_plan`);
- the trunk: ONE plan from the dynamic-token trunk graph with one optimisation profile per token count
  of every (resolution bucket, size), min = opt = max = that count's shapes, so each is tuned as a static
  engine while the plan (and so the device) holds the block weights once
  (`build_plan(..., profiles=trunk_profiles(...))`); two buckets of one token count share a profile.
`trt_stage` builds the plans from the product-dtype graphs and validates each part of each size in
Polygraphy's `TrtRunner` (the trunk under that size's profile) against its torch module, then the
chain by running the three runners in sequence. TensorRT itself is imported only inside `trt_stage`.
"""

from __future__ import annotations

import time
from collections import OrderedDict

from polygraphy.backend.base import BaseRunner

from ...artifacts.layouts import TRUNK_ONNX, TRUNK_PLAN, in_bucket, onnx_relpath, part_plan_relpath
from ...artifacts.manifest import sha256_file
from ...artifacts.tensorrt_plans import TIMING_CACHE, device_signature, require_tensorrt, resolve_axis
from ..tensorrt import build_plan
from ..validate import compare_with_torch, require_valid
from .validate import tensor_metadata


def profile_tokens(token_counts) -> list[int]:
    """The trunk plan's profiles, one per distinct token count of every (bucket, size), in first-seen order
    (one bucket: its sizes' order, as before buckets)."""
    return list(dict.fromkeys(int(n) for n in token_counts))


def trunk_profiles(trunk_io: dict, token_counts: list[int], text_len: int) -> list:
    """One Polygraphy `Profile` per token count: every input's shape with the symbolic token axis resolved
    (min = opt = max, so each is tuned as a static engine)."""
    from polygraphy.backend.trt import Profile

    profiles = []
    for tokens in token_counts:
        profile = Profile()
        for tensor in trunk_io["inputs"]:
            shape = tuple(resolve_axis(d, tokens, text_len) for d in tensor["shape"])
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


def trt_stage(buckets: list[tuple], req, tmp, tolerances: dict, reporter) -> list[list[dict]]:
    """`buckets`: (name, staged model, onnx entries, product-dtype values) per resolution bucket, the default
    (None) first. ONE trunk plan with a profile per distinct token count of every (bucket, size); per bucket
    its embed/head plans and a `trt` entry per size (files: embed, trunk, head plans; `trunk_profile`: the
    profile its token count runs under). Raises ValidationError on a mismatch."""
    require_tensorrt()
    from polygraphy.backend.common import BytesFromPath
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    from ..buckets import BucketReporter

    started, signature = time.perf_counter(), device_signature()
    version, cache = signature["tensorrt"], tmp / TIMING_CACHE
    first = buckets[0][1]
    counts = profile_tokens(e["tokens"] for _, _, onnx_entries, _ in buckets for e in onnx_entries)
    trunk_rel = TRUNK_PLAN.format(version=version)
    reporter.stage(first.sizes[0], f"trt: build trunk ({len(counts)} profiles, one per token count)")
    profiles = trunk_profiles(buckets[0][2][0]["parts_io"]["trunk"], counts, first.text_len)
    # refittable: a user LoRA replaces the trunk's weights in place (runtime/backends/staged/tensorrt.py)
    build_plan(tmp / TRUNK_ONNX, tmp / trunk_rel, cache, profiles=profiles, refittable=True)
    trunk_loader = EngineFromBytes(BytesFromPath(str(tmp / trunk_rel)))
    per_bucket = []
    for name, staged, onnx_entries, values in buckets:
        report, where = BucketReporter(reporter, name), f" at {name}" if name else ""
        tokens = {e["patch_size"]: e["tokens"] for e in onnx_entries}
        module = staged.cuda()  # the buckets share their modules: moved once, the rest is the bucket's RoPE
        entries = []
        for p in staged.sizes:
            report.stage(p, "trt: build and validate")
            profile = counts.index(tokens[p])
            files = [in_bucket(part_plan_relpath("embed", p, version), name), trunk_rel,
                     in_bucket(part_plan_relpath("head", p, version), name)]
            for part, rel in (("embed", files[0]), ("head", files[2])):
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                build_plan(tmp / in_bucket(onnx_relpath(part, p), name), tmp / rel, cache)
            feeds = {k: v.cuda() for k, v in values[p].items()}
            results, runners = {}, []
            for part, rel in zip(("embed", "trunk", "head"), files):
                loader = trunk_loader if part == "trunk" else EngineFromBytes(BytesFromPath(str(tmp / rel)))
                at = profile if part == "trunk" else None
                runner = TrtRunner(loader, optimization_profile=at, name=f"trt-{part}")
                part_module, names, outputs = module.part_callables(p)[part]
                inputs = {n: feeds[n] for n in names}
                result = compare_with_torch(runner, part_module, inputs, inputs, outputs, f"tensorrt {version}",
                                            **tolerances)
                results[part] = require_valid(result, f"patch size {p}{where} {part} (TensorRT)").to_json()
                runners.append(TrtRunner(loader, optimization_profile=at))
            chain_inputs = {n: feeds[n] for n in module.part_callables(p)["embed"][1]}

            def reference(patch=p, module=module, **kw):
                return module(patch, kw.pop("latent"), **kw)

            chain = _ChainRunner(runners, tensor_metadata(chain_inputs))
            result = require_valid(compare_with_torch(chain, reference, chain_inputs, chain_inputs, ["prediction"],
                                                      f"tensorrt {version} (embed -> trunk -> head)", **tolerances),
                                   f"patch size {p}{where} chain (TensorRT)")
            entries.append({
                "patch_size": p, "backend": "trt", "layout": "staged", "files": files,
                "sha256": [sha256_file(tmp / f) for f in files], "bytes": sum((tmp / f).stat().st_size for f in files),
                "tokens": tokens[p], "trunk_profile": profile,
                "validation": {**result.to_json(), "validated_as": req.dtype, "parts": results},
                "export_seconds": round(time.perf_counter() - started, 3), **signature,
            })
        per_bucket.append(entries)
    return per_bucket
