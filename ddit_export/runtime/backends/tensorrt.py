"""TensorRT backend: one deserialised plan per patch size, sharing everything that can be shared.

- Every size's execution context is created USER_MANAGED and given the SAME activation buffer,
  sized to the largest `device_memory_size_v2`: only one engine runs at a time on one stream.
- Every engine has the same I/O spec, so ONE set of static input/output buffers is allocated and
  bound to every context once (`set_tensor_address`); a call copies inputs in, enqueues
  (`execute_async_v3` on torch's current stream) and clones the output (the next call reuses it).
- Optionally one CUDA graph per engine (static shapes make each step a single replay).
- Plans are checked against the manifest's sha256 and against this machine's TensorRT version
  and GPU before deserialising, so a foreign plan is refused with a rebuild hint.
"""

from __future__ import annotations

import torch

from ...artifacts.manifest import engine_entries, verify_entry
from ...artifacts.tensorrt_plans import (
    check_plan_compatible,
    device_signature,
    require_tensorrt,
    shared_activation_bytes,
)
from .base import Backend, BackendError, torch_dtype


class TensorRTBackend(Backend):
    name = "trt"

    def __init__(self, folder, manifest=None, device="cuda", cuda_graphs: bool = False):
        super().__init__(folder, manifest, device)
        require_tensorrt()
        import tensorrt as trt

        if self.device.type != "cuda":
            raise BackendError("the TensorRT backend runs on CUDA: pass device='cuda'")
        entries = engine_entries(self.manifest, "trt")
        if not entries:
            raise BackendError(f"{self.folder} has no TensorRT plans: export with `--backends onnx,trt`")
        here = device_signature()
        for entry in entries.values():
            verify_entry(self.folder, entry)
            check_plan_compatible(entry, here)
        self._logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(self._logger)
        self._engines = {}
        for patch, entry in sorted(entries.items()):
            engine = runtime.deserialize_cuda_engine((self.folder / entry["files"][0]).read_bytes())
            if engine is None:
                raise BackendError(f"TensorRT could not deserialise {entry['files'][0]}; rebuild with --force")
            self._engines[patch] = engine
        with torch.cuda.device(self.device):
            self._allocate_and_bind(trt)
        self._cuda_graphs = cuda_graphs
        self._graphs: dict[int, torch.cuda.CUDAGraph] = {}

    def _allocate_and_bind(self, trt) -> None:
        self.activation_bytes = shared_activation_bytes(e.device_memory_size_v2 for e in self._engines.values())
        self._activations = torch.empty(self.activation_bytes, dtype=torch.uint8, device=self.device)
        spec = self.io_spec
        self._inputs_buf = {t.name: torch.empty(t.shape, dtype=torch_dtype(t.dtype), device=self.device)
                            for t in spec.inputs}
        out = spec.outputs[0]
        self._output_buf = torch.empty(out.shape, dtype=torch_dtype(out.dtype), device=self.device)
        self._contexts = {}
        for patch, engine in self._engines.items():
            context = engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
            context.set_device_memory(self._activations.data_ptr(), self.activation_bytes)
            for name, buf in self._inputs_buf.items():
                context.set_tensor_address(name, buf.data_ptr())
            context.set_tensor_address(out.name, self._output_buf.data_ptr())
            self._contexts[patch] = context

    @property
    def patch_sizes(self) -> tuple[int, ...]:
        return tuple(self._engines)

    def _enqueue(self, patch: int, stream: torch.cuda.Stream) -> None:
        if not self._contexts[patch].execute_async_v3(stream.cuda_stream):
            raise BackendError(f"TensorRT failed to enqueue engine p{patch}")

    def _replay(self, patch: int, stream: torch.cuda.Stream) -> None:
        graph = self._graphs.get(patch)
        if graph is None:
            self._enqueue(patch, stream)  # TensorRT finishes lazy setup on a first, uncaptured run
            stream.synchronize()
            graph = torch.cuda.CUDAGraph()
            capture = torch.cuda.Stream(self.device)
            with torch.cuda.graph(graph, stream=capture):
                self._enqueue(patch, capture)
            self._graphs[patch] = graph
        graph.replay()

    def _infer(self, patch, feeds, out_device):
        if patch not in self._contexts:
            raise self._engine_missing(patch)
        for name, value in feeds.items():
            self._inputs_buf[name].copy_(value, non_blocking=True)
        stream = torch.cuda.current_stream(self.device)
        if self._cuda_graphs:
            self._replay(patch, stream)
        else:
            self._enqueue(patch, stream)
        return self._output_buf.clone().to(out_device, non_blocking=True)

    def close(self) -> None:
        self._graphs.clear()
        self._contexts.clear()
        self._engines.clear()
        self._activations = self._inputs_buf = self._output_buf = None
