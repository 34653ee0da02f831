"""Export a tiny transformer-like step to ONNX and validate it against PyTorch (CPU, seconds)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ddit_export.artifacts.iospec import IOSpec, TensorSpec, random_feed
from ddit_export.export.onnx_export import ExportError, _verify_inputs, export_onnx, external_data_path
from ddit_export.export.validate import ValidationError, require_valid, validate_onnx

DIM, HEADS, TEXT = 16, 2, 5


class TinyStep(nn.Module):
    """Patchify -> joint text/image attention with RMSNorm and folded RoPE-like tables -> unpatchify."""

    def __init__(self) -> None:
        super().__init__()
        self.img_in = nn.Linear(4, DIM)
        self.txt_in = nn.Linear(DIM, DIM)
        self.time_in = nn.Linear(1, DIM)
        self.norm = nn.RMSNorm(DIM)
        self.qkv = nn.Linear(DIM, 3 * DIM)
        self.out = nn.Linear(DIM, 4)
        tokens = TEXT + 8 * 8
        # fp32 constants folded in at export, like per-patch-size RoPE tables.
        self.register_buffer("rope_cos", torch.cos(torch.linspace(0, 3, tokens * DIM)).view(tokens, DIM))
        self.register_buffer("rope_sin", torch.sin(torch.linspace(0, 3, tokens * DIM)).view(tokens, DIM))

    def forward(self, latent, encoder_hidden_states, timestep):
        b, c, h, w = latent.shape
        img = self.img_in(latent.flatten(2).transpose(1, 2))
        x = torch.cat([self.txt_in(encoder_hidden_states), img], dim=1)
        x = x + self.time_in(timestep[:, None])[:, None]
        x = self.norm(x)
        x = x * self.rope_cos + x.roll(1, dims=-1) * self.rope_sin
        q, k, v = self.qkv(x).view(b, -1, 3, HEADS, DIM // HEADS).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, -1, DIM)
        return self.out(attn[:, TEXT:]).transpose(1, 2).reshape(b, c, h, w)


def make_inputs(dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return {
        "latent": torch.randn(1, 4, 8, 8, generator=gen, dtype=dtype),
        "encoder_hidden_states": torch.randn(1, TEXT, DIM, generator=gen, dtype=dtype),
        "timestep": torch.tensor([0.7], dtype=dtype),
    }


EXPECTED = IOSpec(
    inputs=[
        TensorSpec("latent", (1, 4, 8, 8), "float32"),
        TensorSpec("encoder_hidden_states", (1, TEXT, DIM), "float32"),
        TensorSpec("timestep", (1,), "float32"),
    ],
    outputs=[TensorSpec("prediction", (1, 4, 8, 8), "float32")],
)


@pytest.fixture(scope="module")
def module() -> TinyStep:
    torch.manual_seed(0)
    return TinyStep().eval()


@pytest.fixture(scope="module")
def exported(module, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "step.onnx"
    spec = export_onnx(module, make_inputs(), ["prediction"], path, opset=21)
    return path, spec


def test_export_spec_and_opset(exported):
    path, spec = exported
    assert path.is_file()
    assert spec == EXPECTED
    assert IOSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec
    opsets = {o.domain: o.version for o in onnx.load(str(path), load_external_data=False).opset_import}
    assert opsets[""] == 21
    assert not external_data_path(path).exists()


def test_validate_passes(module, exported):
    path, _ = exported
    result = validate_onnx(module, make_inputs(), path, atol=1e-4, rtol=1e-4, min_cosine=0.9999)
    print(result.summary())
    assert result.passed, result.summary()
    assert result.max_abs_err < 1e-4 and result.cosine > 0.9999
    assert "CPUExecutionProvider" in result.backend
    assert require_valid(result, "tiny step") is result
    assert json.loads(json.dumps(result.to_json()))["passed"] is True


def test_runs_from_spec_alone(exported):
    # Only the graph file and numpy: what a consumer of manifest.json has.
    path, _ = exported
    spec = IOSpec.from_onnx(path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(spec.output_names, random_feed(spec, seed=3))
    assert out.shape == spec.outputs[0].shape and out.dtype == np.float32
    assert np.isfinite(out).all()


def test_validate_catches_wrong_weights(module, exported):
    path, _ = exported
    perturbed = TinyStep().eval()
    perturbed.load_state_dict(module.state_dict())
    with torch.no_grad():
        perturbed.out.weight.add_(0.05)
    result = validate_onnx(perturbed, make_inputs(), path)
    assert not result.passed
    assert result.max_abs_err > 1e-3
    with pytest.raises(ValidationError, match=f"{result.max_abs_err:.1e}"):
        require_valid(result, "perturbed step")


def test_min_cosine_can_fail_alone(module, exported):
    path, _ = exported
    result = validate_onnx(module, make_inputs(), path, atol=1.0, rtol=1.0, min_cosine=1.01)
    assert not result.passed


def test_external_data_single_file(module, tmp_path):
    path = tmp_path / "ext.onnx"
    spec = export_onnx(module, make_inputs(), ["prediction"], path, external_data=True)
    assert spec == EXPECTED
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ext.onnx", "ext.onnx.data"]
    # Weights live in the one data file; only tensors up to ir.save's 256-byte threshold stay inline.
    proto = onnx.load(str(path), load_external_data=False)
    locations = {e.value for t in proto.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {"ext.onnx.data"}
    assert all(len(t.raw_data) <= 256 for t in proto.graph.initializer)
    assert external_data_path(path).stat().st_size > 4 * 2 * (TEXT + 64) * DIM  # the two RoPE tables
    onnx.checker.check_model(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    expected = module(**make_inputs()).detach().numpy()
    feed = {k: v.numpy() for k, v in make_inputs().items()}
    np.testing.assert_allclose(session.run(None, feed)[0], expected, atol=1e-4)


def test_fp16_export_has_fp16_io(tmp_path):
    half = TinyStep().eval().half()
    spec = export_onnx(half, make_inputs(torch.float16), ["prediction"], tmp_path / "h.onnx")
    assert {t.dtype for t in spec.inputs + spec.outputs} == {"float16"}
    assert [t.shape for t in spec.inputs] == [t.shape for t in EXPECTED.inputs]


def test_old_opset_rejected(module, tmp_path):
    with pytest.raises(ValueError, match="opset 19"):
        export_onnx(module, make_inputs(), ["prediction"], tmp_path / "x.onnx", opset=19)


class Broken(nn.Module):
    def forward(self, latent):
        raise RuntimeError("boom in forward")


def test_exporter_failure_wrapped(tmp_path):
    with pytest.raises(ExportError, match="Broken.*boom in forward"):
        export_onnx(Broken(), {"latent": torch.zeros(1)}, ["prediction"], tmp_path / "b.onnx")


def _graph_input(name: str, original: str, shape: tuple[int, ...]) -> ir.Value:
    value = ir.Value(name=name, shape=ir.Shape(shape), type=ir.TensorType(ir.DataType.FLOAT))
    value.metadata_props["pkg.torch.onnx.original_node_name"] = original
    return value


def test_dropped_input_named():
    # The exporter renames by position, so after a drop "encoder_hidden_states" labels timestep.
    graph_inputs = [
        _graph_input("latent", "latent", (1, 4, 8, 8)),
        _graph_input("encoder_hidden_states", "timestep", (1,)),
    ]
    with pytest.raises(ExportError, match=r"dropped input\(s\) \['encoder_hidden_states'\]"):
        _verify_inputs(graph_inputs, make_inputs())


def test_random_feed_dtypes():
    spec = IOSpec(
        inputs=[
            TensorSpec("a", (2, 3), "bfloat16"),
            TensorSpec("ids", (4,), "int64"),
            TensorSpec("m", (2,), "bool"),
        ],
        outputs=[],
    )
    feed = random_feed(spec, seed=0)
    assert [str(v.dtype) for v in feed.values()] == ["bfloat16", "int64", "bool"]
    assert feed["a"].shape == (2, 3)
    np.testing.assert_array_equal(random_feed(spec, seed=0)["ids"], feed["ids"])
