"""ONNX Runtime backend: one `InferenceSession` per patch size, straight from the manifest.

Every artifact is checked against the sha256 the manifest recorded before a session is made, so
an altered or swapped file is refused. Feed names and dtypes come from the manifest's I/O spec.

Two ways to run:
- CPU execution provider (default, and the only one a CPU-only onnxruntime has): torch CPU
  tensors are handed over as zero-copy numpy views; ONNX Runtime allocates the output.
- CUDA execution provider with I/O binding, used when the backend is loaded for a CUDA device,
  onnxruntime-gpu offers ``CUDAExecutionProvider`` and the latent is a CUDA tensor: inputs are
  bound by the torch tensors' ``data_ptr`` and the output to ONE preallocated torch tensor shared
  by all sizes (only one engine runs at a time), so no host copies happen. The cost is ONNX
  Runtime's own synchronisation: ``synchronize_inputs`` (torch may still be writing the inputs on
  its stream) and the synchronous ``run_with_iobinding``.
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import torch

from ...artifacts.manifest import engine_entries, verify_entry
from .base import LATENT_INPUT, Backend, BackendError, torch_dtype
from .ort_cpu_threading import MODES as THREADING_MODES
from .ort_cpu_threading import tuned_sessions

# torch dtype -> ONNX element type, which `IOBinding.bind_*` accepts directly (covers bfloat16,
# which numpy has no type for).
ONNX_ELEMENT_TYPES = {
    torch.float32: onnx.TensorProto.FLOAT,
    torch.float16: onnx.TensorProto.FLOAT16,
    torch.bfloat16: onnx.TensorProto.BFLOAT16,
    torch.int64: onnx.TensorProto.INT64,
    torch.int32: onnx.TensorProto.INT32,
    torch.bool: onnx.TensorProto.BOOL,
}
CUDA_PROVIDER = "CUDAExecutionProvider"
TENSORRT_PROVIDER = "TensorrtExecutionProvider"
ORT_TRT_CACHE = "ort_trt_cache"  # inside the engine folder: ORT's TensorRT engines and timing cache
CPU_PROVIDER = "CPUExecutionProvider"


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """Zero-copy numpy view of a CPU tensor (bfloat16 through ml_dtypes)."""
    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.bfloat16:
        import ml_dtypes

        return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()


def from_numpy(array: np.ndarray) -> torch.Tensor:
    """Zero-copy torch view of a numpy array (bfloat16 through ml_dtypes)."""
    if array.dtype.name == "bfloat16":
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def cuda_provider_available() -> bool:
    import onnxruntime as ort

    return CUDA_PROVIDER in ort.get_available_providers()


class OnnxRuntimeBackend(Backend):
    """ONNX Runtime sessions of the manifest's ``onnx`` engines.

    ``io_binding=True`` forces the I/O-binding path on whatever device the latent lives on (the
    CUDA path's code, exercised on CPU by the tests); by default it is used exactly when the CUDA
    execution provider runs the sessions.
    """

    name = "onnx"

    def __init__(self, folder, manifest=None, device="cpu", *, io_binding: bool | None = None,
                 cpu_threading: str = "auto"):
        import onnxruntime as ort

        super().__init__(folder, manifest, device)
        entries = engine_entries(self.manifest, "onnx")
        if not entries:
            raise BackendError(f"{self.folder}: the manifest lists no onnx engines; export them first")
        if cpu_threading != "auto" and cpu_threading not in THREADING_MODES:
            raise BackendError(
                f"unknown cpu_threading {cpu_threading!r}: use auto or one of {', '.join(THREADING_MODES)}"
            )
        self.providers = self._providers()
        self.on_cuda = self.providers[0] != CPU_PROVIDER
        self.io_binding = self.on_cuda if io_binding is None else io_binding
        # CPU: each engine's threading mode, and the timings it was chosen by (ort_cpu_threading.py).
        self.cpu_threading: dict[int, str] = {}
        self.cpu_threading_seconds: dict[int, dict[str, float]] = {}
        paths = {}
        for patch, entry in sorted(entries.items()):
            verify_entry(self.folder, entry)  # refuses altered artifacts with the manifest's message
            paths[patch] = str(self.folder / entry["files"][0])
        if not self.on_cuda and self.dtype == torch.bfloat16:
            raise BackendError(self._cpu_dtype_refusal())
        try:
            if self.on_cuda:
                options = ort.SessionOptions()
                options.log_severity_level = 3  # errors only: node placement notes are not the user's concern
                self._sessions = {p: ort.InferenceSession(f, options, providers=self.providers)
                                  for p, f in paths.items()}
                for patch, session in self._sessions.items():
                    self._check_signature(patch, session)
            else:
                self._sessions, self.cpu_threading, self.cpu_threading_seconds = tuned_sessions(
                    paths, self.providers, self._zero_feeds(), LATENT_INPUT, cpu_threading,
                    check=self._check_signature,
                )
        except BackendError:
            raise
        except Exception as err:  # ORT's own exception types derive from Exception only
            raise self._load_failure(err) from None
        self._output_name = self.io_spec.output_names[0]
        self._bindings = {p: s.io_binding() for p, s in self._sessions.items()} if self.io_binding else {}
        self._out: torch.Tensor | None = None  # the shared bound output, allocated on first use

    def _cpu_dtype_refusal(self) -> str:
        dtype = self.manifest.dtype
        return (f"the engines in {self.folder} are {dtype} and ONNX Runtime on the CPU has no {dtype} math: "
                f"use --backend torch, a GPU (--device cuda with onnxruntime-gpu), or re-export with --dtype fp32")

    def _load_failure(self, err: Exception) -> BackendError:
        """ONNX Runtime's multi-line load errors as one line that says what to do."""
        first = next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)
        if not self.on_cuda and self.dtype != torch.float32 and type(err).__name__ in ("NotImplemented", "Fail",
                                                                                       "InvalidGraph"):
            return BackendError(self._cpu_dtype_refusal())
        return BackendError(f"ONNX Runtime cannot load the engines in {self.folder} ({type(err).__name__}: "
                            f"{first[:300]}); the graph or its data file is damaged: re-export with --force")

    def _providers(self) -> list:
        if self.device.type != "cuda":
            return [CPU_PROVIDER]
        if not cuda_provider_available():
            warnings.warn(
                f"{CUDA_PROVIDER} is not available (install onnxruntime-gpu); the onnx backend runs on the CPU "
                "and copies every step's tensors between devices",
                stacklevel=3,
            )
            return [CPU_PROVIDER]
        return [(CUDA_PROVIDER, {"device_id": self.device.index or 0}), CPU_PROVIDER]

    def _zero_feeds(self) -> dict:
        """Inputs of the spec's shapes and dtypes, for timing a session (values do not matter)."""
        return {t.name: to_numpy(torch.zeros(t.shape, dtype=torch_dtype(t.dtype))) for t in self.io_spec.inputs}

    def _check_signature(self, patch: int, session) -> None:
        names = [i.name for i in session.get_inputs()]
        if names != self.io_spec.input_names:
            raise BackendError(
                f"{self.folder}: engine p{patch} takes inputs {names}, the manifest says "
                f"{self.io_spec.input_names}; rebuild with --force"
            )

    @property
    def patch_sizes(self) -> tuple[int, ...]:
        return tuple(self._sessions)

    def _infer(self, patch, feeds, out_device):
        session = self._sessions.get(patch)
        if session is None:
            raise self._engine_missing(patch)
        if self.io_binding and (out_device.type == "cuda") == self.on_cuda:
            return self._run_bound(patch, session, feeds).to(out_device)
        arrays = {name: to_numpy(value) for name, value in feeds.items()}
        (out,) = session.run([self._output_name], arrays)
        return from_numpy(out).to(out_device)

    def _run_bound(self, patch: int, session, feeds) -> torch.Tensor:
        """I/O binding as onnxruntime documents it: bind device pointers, run, output in place."""
        device = self.device if self.on_cuda else torch.device("cpu")
        device_id = device.index or 0
        binding = self._bindings[patch]
        for name, value in feeds.items():
            # Inputs are rebound every call (the latent is a new tensor each step); the dict keeps
            # any device copy alive until the run is over.
            value = feeds[name] = value.to(device)
            binding.bind_input(
                name=name,
                device_type=device.type,
                device_id=device_id,
                element_type=ONNX_ELEMENT_TYPES[value.dtype],
                shape=tuple(value.shape),
                buffer_ptr=value.data_ptr(),
            )
        out = self._output_buffer(device)
        binding.bind_output(
            name=self._output_name,
            device_type=device.type,
            device_id=device_id,
            element_type=ONNX_ELEMENT_TYPES[out.dtype],
            shape=tuple(out.shape),
            buffer_ptr=out.data_ptr(),
        )
        # On CUDA both are a device-wide sync: torch may still be writing the inputs on its own
        # stream, and the output must be complete before torch reads it.
        binding.synchronize_inputs()
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        return out

    def _output_buffer(self, device: torch.device) -> torch.Tensor:
        out = self._out
        if out is None or out.device != device:
            spec = self.io_spec.outputs[0]
            out = self._out = torch.empty(spec.shape, dtype=torch_dtype(spec.dtype), device=device)
        return out

    def close(self) -> None:
        self._bindings.clear()
        self._sessions.clear()
        self._out = None


class OnnxRuntimeTensorRTBackend(OnnxRuntimeBackend):
    """The same ONNX graphs through ONNX Runtime's TensorRT execution provider (CUDA as fallback).

    ORT builds a TensorRT engine per graph on first load and caches it, with its timing cache,
    in `<engine folder>/ort_trt_cache/`, so later loads skip the build.
    """

    name = "onnx-trt"

    def _providers(self) -> list:
        import onnxruntime as ort

        if self.device.type != "cuda" or TENSORRT_PROVIDER not in ort.get_available_providers():
            raise BackendError(
                f"the onnx-trt backend needs onnxruntime-gpu with {TENSORRT_PROVIDER} and a CUDA device "
                f"(have {ort.get_available_providers()}, device {self.device}); use --backend onnx or trt"
            )
        cache = self.folder / ORT_TRT_CACHE
        cache.mkdir(exist_ok=True)
        device_id = self.device.index or 0
        trt_options = {
            "device_id": device_id,
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(cache),
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(cache),
            "trt_builder_optimization_level": 3,
        }
        return [(TENSORRT_PROVIDER, trt_options), (CUDA_PROVIDER, {"device_id": device_id}), CPU_PROVIDER]
