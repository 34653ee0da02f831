"""Where a staged ONNX graph keeps each linear layer's weight, and that weight as the file has it.

The dynamo exporter keeps some weights under their module's name (`...norm1.linear.weight`) and
folds most into anonymous transposed constants (`val_25` = `to_q.weight` transposed, feeding a
MatMul whose output an Add with `...to_q.bias` takes). Both are found from the graph alone, so a
deployment needs no model checkpoint to apply a LoRA. A weight the exporter shares between two
modules (identical tensors) cannot take a LoRA for one of them: such modules are left out.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from .host import LoraHost


def linear_weights(graph_path: Path) -> dict[str, tuple[str, bool, tuple[int, int]]]:
    """module -> (initializer name, stored transposed, (out, in)) for every linear layer of the graph.

    Module names are the diffusers transformer's: a stacked-adapter layer's `.base` is dropped.
    """
    import onnx

    model = onnx.load(str(graph_path), load_external_data=False)
    inits = {t.name: tuple(t.dims) for t in model.graph.initializer}
    consumers = defaultdict(list)
    for node in model.graph.node:
        for name in node.input:
            consumers[name].append(node)
    found: dict[str, list] = defaultdict(list)
    for name, dims in inits.items():
        if len(dims) != 2:
            continue
        if name.endswith(".weight"):
            found[name[: -len(".weight")]].append((name, False, dims))
            continue
        for node in consumers[name]:
            if node.op_type != "MatMul" or node.input[1] != name:
                continue
            for add in consumers[node.output[0]]:
                biases = [i for i in add.input if add.op_type == "Add" and i.endswith(".bias") and i in inits]
                if biases:
                    found[biases[0][: -len(".bias")]].append((name, True, (dims[1], dims[0])))
    owners = defaultdict(int)
    for hits in found.values():
        for name, *_ in hits:
            owners[name] += 1
    table = {}
    for module, hits in found.items():
        if len(hits) == 1 and owners[hits[0][0]] == 1:  # one weight, one owner: unambiguous
            table[module.removesuffix(".base")] = hits[0]
    return table


def read_initializers(graph_path: Path, names) -> dict[str, np.ndarray]:
    """The named initializers as stored (embedded or external data), as numpy arrays."""
    import onnx
    from onnx import numpy_helper

    wanted = set(names)
    model = onnx.load(str(graph_path), load_external_data=False)
    out = {t.name: numpy_helper.to_array(t, base_dir=str(Path(graph_path).parent))
           for t in model.graph.initializer if t.name in wanted}
    del model
    return out


def to_torch(array: np.ndarray) -> torch.Tensor:
    """numpy -> torch, bfloat16 (ml_dtypes) included."""
    if array.dtype.name == "bfloat16":
        return torch.from_numpy(np.array(array).view(np.uint16)).view(torch.bfloat16)
    return torch.from_numpy(np.array(array))  # a writable copy: the arrays onnx hands out may be read-only


def to_numpy(tensor: torch.Tensor, like: np.dtype) -> np.ndarray:
    """torch -> numpy in the initializer's dtype (bfloat16 through ml_dtypes)."""
    if tensor.dtype == torch.bfloat16:
        return tensor.contiguous().view(torch.uint16).numpy().view(like)
    return np.ascontiguousarray(tensor.numpy()).astype(like, copy=False)


class OnnxLoraWeights(LoraHost):
    """Mixin for ONNX-file backends: the originals are the graph files; new weights go in as overrides.

    Subclasses give `_lora_graphs()` (the shared graphs whose weights a LoRA changes: the trunk, and
    its split halves) and `_lora_rewrite(path, overrides)` (make that graph run with `overrides`,
    initializer name -> array as stored; `{}`: as the file). Restoring is rewriting without overrides,
    so the originals come back bit for bit from the file itself.
    """

    def _lora_tables(self) -> dict[Path, dict]:
        tables = self.__dict__.get("_lora_table_cache")
        if tables is None:
            tables = {Path(p): linear_weights(Path(p)) for p in self._lora_graphs()}
            self.__dict__["_lora_table_cache"] = tables
        return tables

    def _lora_targets(self):
        first = self._lora_tables()[Path(self._lora_graphs()[0])]  # the whole trunk: every module
        return {m: shape for m, (_, _, shape) in first.items()}

    def _lora_prepare(self, modules):
        path = Path(self._lora_graphs()[0])
        table = self._lora_tables()[path]
        arrays = read_initializers(path, [table[m][0] for m in modules])
        self._lora_staging = {m: arrays[table[m][0]] for m in modules}

    def _lora_original(self, module):
        _, transposed, _ = self._lora_tables()[Path(self._lora_graphs()[0])][module]
        weight = to_torch(self._lora_staging[module])
        return weight.T if transposed else weight

    def _lora_apply(self, merged, restore):
        merged = dict(merged)  # module -> full weight (out x in)
        for path, table in self._lora_tables().items():
            overrides = {}
            for module, weight in merged.items():
                if module in table:
                    name, transposed, _ = table[module]
                    stored = weight.T.contiguous() if transposed else weight
                    overrides[name] = np.ascontiguousarray(to_numpy(stored, self._lora_staging[module].dtype))
            self._lora_rewrite(path, overrides)
        self._lora_staging = {}
