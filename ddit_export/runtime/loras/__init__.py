"""User LoRAs on compiled engines: read (diffusers' loader), check, and write full weights from the originals.

`files.py` reads a file as diffusers would; `merge.py` checks it against a model and computes the
weights; `host.py` is `set_loras` for any backend; `torch_weights.py` and `onnx_weights.py` write them
into torch tensors or ONNX Runtime sessions (docs/loras.md).
"""

from .files import LoraError, LoraFile, LoraSpec, as_spec, parse_lora_arg, read_lora

__all__ = ["LoraError", "LoraFile", "LoraSpec", "as_spec", "parse_lora_arg", "read_lora"]
