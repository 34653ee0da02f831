"""User LoRAs on staged engines: exactly diffusers' fused model, swaps from the originals, one-line refusals."""

from __future__ import annotations

import pytest
import torch

from ddit_export.ddit.engine import PatchSizeEngine
from ddit_export.families.registry import family_by_name
from ddit_export.runtime.backends import get_backend
from ddit_export.runtime.loras import LoraError, parse_lora_arg
from tests.runtime.loras.helpers import diffusers_fused, kohya_lora, peft_lora

SHAPE, TEXT = (1, 16, 16, 16), 8
TOL = dict(atol=1e-4, rtol=1e-3)  # the export's validation tolerance


@pytest.fixture(scope="module")
def staged(tiny_flux_staged_engines):
    return tiny_flux_staged_engines


@pytest.fixture(scope="module")
def loras(tmp_path_factory):
    root = tmp_path_factory.mktemp("files")
    return {"a": peft_lora(root / "a.safetensors", seed=1), "b": peft_lora(root / "b.safetensors", seed=2, rank=2,
                                                                             alpha=2.0, targets=["to_q", "to_v"]),
            "kohya": kohya_lora(root / "kohya.safetensors", seed=3)}


def _inputs(seed=0):
    fam = family_by_name("flux")
    probe = PatchSizeEngine(fam, fam.load("tiny"), None, 2, SHAPE, TEXT)
    return probe.sample_inputs(torch.float32, seed=seed)


def _run(backend, patch, inputs):
    inputs = dict(inputs)
    return backend(patch, inputs.pop("latent"), **inputs).clone()


@pytest.mark.parametrize("backend_name", ["torch", "onnx"])
@pytest.mark.parametrize("chosen", [[("a", 0.7)], [("kohya", 1.0)], [("a", 1.0), ("b", -0.5)]])
def test_base_size_equals_diffusers_load_and_fuse(staged, loras, backend_name, chosen, torch_single_thread):
    files = [(loras[k], s) for k, s in chosen]
    inputs = _inputs()
    fused = diffusers_fused(files)
    want = PatchSizeEngine(family_by_name("flux"), fused, None, 2, SHAPE, TEXT)(**inputs).detach()
    with get_backend(backend_name, staged, loras=files) as backend:
        got = _run(backend, 2, inputs)
        assert backend.loras and [s.scale for s in backend.loras] == [s for _, s in chosen]
        backend.set_loras([])
        plain = _run(backend, 2, inputs)
    torch.testing.assert_close(got, want, **TOL)
    assert (plain - want).abs().max() > 100 * TOL["atol"], "the LoRA must change the prediction"


@pytest.mark.parametrize("backend_name", ["torch", "onnx"])
def test_swaps_are_computed_from_the_originals_bit_for_bit(staged, loras, backend_name, torch_single_thread):
    inputs = _inputs(seed=5)
    with get_backend(backend_name, staged) as backend:
        original = {p: _run(backend, p, inputs) for p in backend.patch_sizes}
        backend.set_loras([(loras["a"], 0.8)])
        with_a = {p: _run(backend, p, inputs) for p in backend.patch_sizes}
        backend.set_loras([(loras["b"], 1.0), (loras["kohya"], 0.5)])
        with_b = {p: _run(backend, p, inputs) for p in backend.patch_sizes}
        backend.set_loras([(loras["a"], 0.8)])
        again_a = {p: _run(backend, p, inputs) for p in backend.patch_sizes}
        backend.set_loras([])
        removed = {p: _run(backend, p, inputs) for p in backend.patch_sizes}
    for p in original:  # every patch size sees the LoRA: it is in the trunk they share
        assert not torch.equal(with_a[p], original[p]) and not torch.equal(with_b[p], with_a[p])
        assert torch.equal(again_a[p], with_a[p]), f"A -> B -> A must give A back exactly (p{p})"
        assert torch.equal(removed[p], original[p]), f"removing every LoRA must give the original exactly (p{p})"


def _wrong_width(path):
    """A kohya LoRA for a model twice as wide: its shapes do not fit."""
    from safetensors.torch import load_file, save_file

    state = load_file(str(kohya_lora(path, seed=4)))
    save_file({k: torch.cat([v, v], dim=-1) if k.endswith("lora_down.weight") else v for k, v in state.items()},
              str(path))
    return path


def _peft_keys(path, targets):
    return peft_lora(path, seed=9, targets=targets)


@pytest.mark.parametrize("make, naming", [
    (_wrong_width, ("transformer.single_transformer_blocks.0.proj_out.lora_A.weight", "another model size")),
    (lambda p: _peft_keys(p, ["x_embedder"]), ("transformer.x_embedder.lora_A.weight", "outside the transformer")),
    (lambda p: p.write_bytes(b"not a safetensors file") and p, ("diffusers cannot read",)),
])
def test_a_lora_that_does_not_fit_is_refused_in_one_line_and_nothing_changes(staged, loras, tmp_path, make, naming):
    bad = make(tmp_path / "bad.safetensors")
    inputs = _inputs(seed=2)
    with get_backend("onnx", staged, loras=[loras["a"]]) as backend:
        before = _run(backend, 4, inputs)
        with pytest.raises(LoraError) as err:
            backend.set_loras([(loras["b"], 1.0), (bad, 1.0)])
        assert torch.equal(_run(backend, 4, inputs), before) and backend.loras[0].path == loras["a"]
    message = str(err.value)
    assert "\n" not in message and str(bad) in message and all(n in message for n in naming), message


def test_single_layout_points_to_the_staged_layout(tiny_flux_engines, loras):
    with pytest.raises(LoraError, match="--layout staged"):
        get_backend("onnx", tiny_flux_engines, loras=[(loras["a"], 1.0)])


def test_lora_argument_parses_an_optional_scale(tmp_path):
    assert parse_lora_arg("style.safetensors").scale == 1.0
    spec = parse_lora_arg(f"{tmp_path}/a:b/style.safetensors:0.75")
    assert spec.scale == 0.75 and spec.path.name == "style.safetensors"
    with pytest.raises(LoraError, match="finite"):
        parse_lora_arg("x.safetensors:nan")


@pytest.fixture(scope="module")
def staged_aoti(tmp_path_factory):
    from ddit_export.cli import main

    out = tmp_path_factory.mktemp("loras_aoti") / "staged"
    torch.set_num_threads(1)
    assert main(["flux", "--model", "tiny", "--patch-sizes", "2,4", "--height", "128", "--width", "128",
                 "--text-len", "8", "--dtype", "fp32", "--layout", "staged", "--backends", "onnx,aoti",
                 "--out", str(out)]) == 0
    return out


def test_compiled_backends_take_loras_without_recompiling(staged_aoti, loras, torch_single_thread):
    """torch.compile and AOTInductor read the weights in place: same outputs as eager, no new graph."""
    from torch._dynamo.utils import counters

    inputs = _inputs(seed=3)
    files = [(loras["a"], 0.6), (loras["kohya"], 1.0)]
    with get_backend("torch", staged_aoti, loras=files) as eager:
        want = {p: _run(eager, p, inputs) for p in eager.patch_sizes}
    for name in ("aoti", "torch-compile"):
        with get_backend(name, staged_aoti) as backend:
            original = {p: _run(backend, p, inputs) for p in backend.patch_sizes}
            graphs = counters["stats"]["unique_graphs"]
            backend.set_loras(files)
            got = {p: _run(backend, p, inputs) for p in backend.patch_sizes}
            assert counters["stats"]["unique_graphs"] == graphs, f"{name} recompiled after set_loras"
            backend.set_loras([])
            for p in want:
                torch.testing.assert_close(got[p], want[p], **TOL)
                assert torch.equal(_run(backend, p, inputs), original[p]), f"{name} p{p}: originals back exactly"
