"""TensorRT backend of a staged folder: embed[P] plan -> ONE trunk plan (profile P) -> head[P] plan.

- The trunk plan has one optimisation profile per token count (min = opt = max) of every resolution
  bucket and size; one execution context per size, set to its entry's `trunk_profile` and input shapes
  once at load. Every bucket's backend in a process uses the same deserialised trunk plan.
- Every context of every plan (embeds, heads, trunk profiles) is USER_MANAGED and given the SAME
  activation buffer, sized to the largest need (`get_device_memory_size_for_profile_v2` per
  profile): one part runs at a time on one stream.
- Each size has static buffers for every named value of its chain, bound once
  (`set_tensor_address`); a call copies the inputs in, enqueues the three parts on torch's current
  stream and clones the prediction.
Plans are checked against the manifest's sha256 and this machine's TensorRT version and GPU.
"""

from __future__ import annotations

import threading

import torch

from ....artifacts.manifest import verify_entry
from ....artifacts.tensorrt_plans import (
    check_plan_compatible,
    device_signature,
    require_tensorrt,
    resolve_axis,
    shared_activation_bytes,
)
from ...loras.files import LoraError
from ...loras.onnx_weights import OnnxLoraWeights, read_initializers, to_torch
from ..base import Backend, BackendError, torch_dtype
from .calls import SIGNAL_WEIGHTS, StagedCalls
from .onnxruntime import PARTS, onnx_initializers

_TRT_DTYPES = {torch.float32: lambda trt: trt.DataType.FLOAT, torch.float16: lambda trt: trt.DataType.HALF,
               torch.bfloat16: lambda trt: trt.DataType.BF16}


class TensorRTStagedBackend(OnnxLoraWeights, StagedCalls, Backend):
    name = "trt"

    def __init__(self, folder, manifest=None, device="cuda"):
        super().__init__(folder, manifest, device)
        require_tensorrt()
        import tensorrt as trt

        if self.device.type != "cuda":
            raise BackendError("the TensorRT backend runs on CUDA: pass device='cuda'")
        entries = self.manifest.engines_of("trt")
        if not entries:
            raise BackendError(f"{self.folder} has no staged TensorRT plans: export with `--backends onnx,trt`")
        here = device_signature()
        for entry in entries.values():
            verify_entry(self.folder, entry)
            check_plan_compatible(entry, here)
        onnx_io = self.manifest.engines_of("onnx")
        plans, self._plan_keys = {}, []
        for entry in entries.values():
            for rel, sha in zip(entry["files"], entry["sha256"]):
                if rel not in plans:  # the trunk plan: one engine in the process for every bucket's backend
                    key, plans[rel] = shared_plan(trt, self.folder / rel, sha, self.device)
                    self._plan_keys.append(key)
        self._plans = plans
        self._sizes = sorted(entries)
        text_len = self.manifest.text_len
        with torch.cuda.device(self.device):
            self._bind(trt, entries, onnx_io, text_len)

    def _bind(self, trt, entries, onnx_io, text_len) -> None:
        trunk = self._plans[entries[self._sizes[0]]["files"][1]]
        needs = [e.device_memory_size_v2 for rel, e in self._plans.items() if e is not trunk]
        needs += [trunk.get_device_memory_size_for_profile_v2(i) for i in range(trunk.num_optimization_profiles)]
        self.activation_bytes = shared_activation_bytes(needs)
        self._activations = torch.empty(self.activation_bytes, dtype=torch.uint8, device=self.device)
        stream = torch.cuda.current_stream(self.device)
        self._buffers, self._contexts, self._io = {}, {}, {}
        for index, p in enumerate(self._sizes):
            parts_io, tokens = onnx_io[p]["parts_io"], int(onnx_io[p]["tokens"])
            buffers = {}
            for io in parts_io.values():
                for t in [*io["inputs"], *io["outputs"]]:
                    if t["name"] not in buffers:
                        shape = tuple(resolve_axis(d, tokens, text_len) for d in t["shape"])
                        buffers[t["name"]] = torch.empty(shape, dtype=torch_dtype(t["dtype"]), device=self.device)
            buffers["size_index"].fill_(self._sizes.index(p))  # constant per size
            contexts = []
            for part, rel in zip(PARTS, entries[p]["files"]):
                engine = self._plans[rel]
                context = engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
                context.set_device_memory(self._activations.data_ptr(), self.activation_bytes)
                if part == "trunk":  # the profile of this size's token count (folders before buckets: size order)
                    profile = int(entries[p].get("trunk_profile", index))
                    context.set_optimization_profile_async(profile, stream.cuda_stream)
                    for t in parts_io[part]["inputs"]:  # this profile's static shapes, set once
                        context.set_input_shape(t["name"], tuple(buffers[t["name"]].shape))
                for t in [*parts_io[part]["inputs"], *parts_io[part]["outputs"]]:
                    context.set_tensor_address(t["name"], buffers[t["name"]].data_ptr())
                contexts.append(context)
            self._buffers[p], self._contexts[p] = buffers, contexts
            self._io[p] = {part: ([t["name"] for t in io["inputs"]], [t["name"] for t in io["outputs"]])
                           for part, io in parts_io.items()}
        stream.synchronize()

    @property
    def patch_sizes(self) -> tuple[int, ...]:
        return tuple(self._sizes)

    def _infer(self, patch, feeds, out_device):
        if patch not in self._contexts:
            raise self._engine_missing(patch)
        buffers = self._buffers[patch]
        for name, value in feeds.items():
            buffers[name].copy_(value, non_blocking=True)
        stream = torch.cuda.current_stream(self.device)
        for part, context in zip(PARTS, self._contexts[patch]):
            if not context.execute_async_v3(stream.cuda_stream):
                raise BackendError(f"TensorRT failed to enqueue the {part} of p{patch}")
        return buffers[self.io_spec.output_names[0]].clone().to(out_device, non_blocking=True)

    # -- the parts one at a time (step caching: calls.py) ----------------------------------
    def _start(self, patch, feeds):
        buffers = self._buffers[patch]
        for name, value in feeds.items():
            buffers[name].copy_(value, non_blocking=True)
        return dict(buffers)  # the size's static buffers, by name

    def _part(self, patch, part, values):
        if part not in PARTS:
            self._require_split()
        buffers = self._buffers[patch]
        inputs, outputs = self._io[patch][part]
        for name in inputs:  # a cached step hands the head tokens computed outside the plans
            if values[name] is not buffers[name]:
                buffers[name].copy_(values[name], non_blocking=True)
        stream = torch.cuda.current_stream(self.device)
        if not self._contexts[patch][PARTS.index(part)].execute_async_v3(stream.cuda_stream):
            raise BackendError(f"TensorRT failed to enqueue the {part} of p{patch}")
        return {**values, **{n: buffers[n] for n in outputs}}

    def run_head(self, patch, values, out_device):
        return super().run_head(patch, values, out_device).clone()  # the plan's buffer is reused next call

    def signal_weights(self):
        onnx = self.manifest.engines_of("onnx")[self._sizes[0]]
        return {n: t.to(self.device) for n, t in
                onnx_initializers(self.folder / onnx["files"][1], SIGNAL_WEIGHTS).items()}

    # -- user LoRAs: the trunk plan refitted with FULL weights (never deltas) ----------------------------
    # The weights a LoRA changes are the ONNX trunk's initializers (the parser names the plan's weights
    # after them); the originals are read from that file. Each refit sets every weight the new set
    # changes AND every weight the previous set changed (back to the file's), so A -> B -> A leaves
    # exactly A's weights and no trace of B.
    def _lora_graphs(self):
        onnx = self.manifest.engines_of("onnx")[self._sizes[0]]
        return [self.folder / onnx["files"][1]]

    def _lora_rewrite(self, path, overrides):
        import tensorrt as trt

        trunk = self._plans[self.manifest.engines_of("trt")[self._sizes[0]]["files"][1]]
        if not trunk.refittable:
            raise LoraError(f"{self.folder}: its TensorRT trunk plan was built without refit, so it cannot take "
                            "LoRAs: re-export with `--backends onnx,trt --force` (plans are built refittable now)")
        previous = self.__dict__.get("_refitted", set())
        weights = dict(overrides)
        weights.update(read_initializers(path, previous - weights.keys()))  # back to the file's own
        refitter = trt.Refitter(trunk, trt.Logger(trt.Logger.WARNING))
        held = []  # host copies alive until the refit returns
        for name, array in weights.items():
            tensor = to_torch(array).contiguous()
            held.append(tensor)
            if not refitter.set_named_weights(name, trt.Weights(_TRT_DTYPES[tensor.dtype](trt), tensor.data_ptr(),
                                                                tensor.numel())):
                raise BackendError(f"TensorRT refused new weights for {name} of the trunk plan")
        missing = refitter.get_missing_weights()  # weights the builder fused with ours: the file's own
        for name, array in read_initializers(path, missing).items():
            tensor = to_torch(array).contiguous()
            held.append(tensor)
            refitter.set_named_weights(name, trt.Weights(_TRT_DTYPES[tensor.dtype](trt), tensor.data_ptr(),
                                                         tensor.numel()))
        torch.cuda.current_stream(self.device).synchronize()  # no call may run on the old weights meanwhile
        if not refitter.refit_cuda_engine():
            raise BackendError("TensorRT could not refit the trunk plan (missing weights: "
                               f"{list(refitter.get_missing_weights())[:3]})")
        self._refitted = set(overrides)

    def close(self) -> None:
        self._contexts.clear()
        self._buffers.clear()
        self._plans.clear()
        for key in self._plan_keys:
            release_plan(key)
        self._plan_keys = []
        self._activations = None


# Deserialised plans shared by every bucket's backend in a process (the trunk plan holds the weights once on
# the device; each backend makes its own execution contexts); released with the last backend using them.
_PLANS: dict[tuple, list] = {}
_PLANS_LOCK = threading.Lock()


def shared_plan(trt, path, sha256: str, device) -> tuple[tuple, object]:
    key = (str(path.resolve()), sha256, str(device))
    with _PLANS_LOCK:
        held = _PLANS.get(key)
        if held is None:
            runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
            engine = runtime.deserialize_cuda_engine(path.read_bytes())
            if engine is None:
                raise BackendError(f"TensorRT could not deserialise {path.name}; rebuild with --force")
            held = _PLANS[key] = [engine, 0, runtime]
        held[1] += 1
        return key, held[0]


def release_plan(key: tuple) -> None:
    with _PLANS_LOCK:
        held = _PLANS.get(key)
        if held is not None:
            held[1] -= 1
            if held[1] <= 0:
                del _PLANS[key]
