"""artifacts/onnx_data.py: an external data file missing or shorter than its graph reads is named."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.external_data_helper import convert_model_to_external_data

from ddit_export.artifacts.onnx_data import external_data_problem


@pytest.fixture
def graph(tmp_path):
    """y = x + w (an initializer) + c (a Constant node's tensor), both stored in weights.bin beside the graph."""
    w = numpy_helper.from_array(np.arange(1024, dtype=np.float32), "w")
    c = numpy_helper.from_array(np.ones(1024, dtype=np.float32), "c_value")
    nodes = [helper.make_node("Constant", [], ["c"], value=c), helper.make_node("Add", ["x", "w"], ["xw"]),
             helper.make_node("Add", ["xw", "c"], ["y"])]
    model = helper.make_model(helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1024])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1024])], initializer=[w]))
    path = tmp_path / "g.onnx"
    convert_model_to_external_data(model, all_tensors_to_one_file=True, location="weights.bin", size_threshold=0,
                                   convert_attribute=True)
    onnx.save_model(model, str(path))
    return path


def test_an_intact_graph_has_no_problem(graph):
    assert (graph.parent / "weights.bin").stat().st_size == 2 * 4096  # both tensors, the Constant's last
    assert external_data_problem(graph) is None
    onnx.checker.check_model(str(graph))  # the fixture is a valid model


@pytest.mark.parametrize("keep", [0.5, 0.99])
def test_a_truncated_data_file_is_named_with_its_sizes(graph, keep):
    data = graph.parent / "weights.bin"
    whole = data.stat().st_size
    data.write_bytes(data.read_bytes()[: int(whole * keep)])
    problem = external_data_problem(graph)
    assert problem == f"{data} is truncated: {int(whole * keep)} bytes, and g.onnx reads its weights up to byte {whole}"


def test_a_missing_data_file_is_named(graph):
    (graph.parent / "weights.bin").unlink()
    assert external_data_problem(graph) == f"{graph.parent / 'weights.bin'}, the weights of g.onnx, is missing"


def test_a_graph_with_inline_weights_needs_no_data_file(tmp_path):
    w = numpy_helper.from_array(np.zeros(4, dtype=np.float32), "w")
    model = helper.make_model(helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], initializer=[w]))
    onnx.save_model(model, str(tmp_path / "inline.onnx"))
    assert external_data_problem(tmp_path / "inline.onnx") is None


def test_a_graph_that_is_not_onnx_is_named(tmp_path):
    graph = tmp_path / "g.onnx"
    graph.write_bytes(b"not a protobuf" * 10)
    assert external_data_problem(graph) == f"{graph} is not a readable ONNX graph (DecodeError)"
