"""Does an ONNX graph's external data file hold every byte the graph reads from it?

A weights file cut short (a copy or download that stopped, a disk that filled) whose manifest hash
was rewritten to match passes `verify_entry`'s sha256 check; ONNX Runtime then fails deep in its
loader with an offset error that names a tensor, not the file. This check reads only the graph (no
weights) and compares each external tensor's offset + length with its data file's size.
"""

from __future__ import annotations

from pathlib import Path


def external_data_problem(graph: Path) -> str | None:
    """One line naming the graph that cannot be parsed or the data file that is missing or too short for it, or
    None when all is there."""
    import onnx

    try:
        model = onnx.load(str(graph), load_external_data=False)
    except Exception as err:  # protobuf's DecodeError and kin: the graph itself is damaged
        return f"{graph} is not a readable ONNX graph ({type(err).__name__})"
    needed: dict[str, int] = {}  # data file -> the last byte the graph reads from it
    for tensor in _tensors(model.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {entry.key: entry.value for entry in tensor.external_data}
        end = int(info.get("offset", 0)) + int(info.get("length", 0))
        needed[info["location"]] = max(needed.get(info["location"], 0), end)
    for location, end in sorted(needed.items()):
        data = graph.parent / location
        if not data.is_file():
            return f"{data}, the weights of {graph.name}, is missing"
        size = data.stat().st_size
        if size < end:
            return f"{data} is truncated: {size} bytes, and {graph.name} reads its weights up to byte {end}"
    return None


def _tensors(graph):
    """Every tensor a graph stores: initializers and constant attributes, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from _tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from _tensors(subgraph)
