"""The staged layout: embed/head per size and ONE trunk with unmerged per-size LoRA, for FLUX and Wan.

The adapters here are random (not the zero init), so the trunk's stacked LoRA really changes the
coarse sizes' outputs and the comparisons with the merged single engines test it.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from ddit_export.artifacts.manifest import read_manifest, sha256_file
from ddit_export.cli import main
from ddit_export.ddit.adapter_pack import save_adapter_pack
from ddit_export.ddit.merge import build_engine
from ddit_export.ddit.model import DDiTModel
from ddit_export.ddit.staged import build_staged, chain
from ddit_export.families.registry import family_by_name
from ddit_export.runtime.backends import get_backend
from tests.ddit.test_ddit_model import randomise_ddit

FLUX_GEOMETRY = ["--height", "128", "--width", "128", "--text-len", "8", "--dtype", "fp32"]
WAN_GEOMETRY = ["--frames", "5", "--height", "96", "--width", "160", "--text-len", "8", "--dtype", "fp32"]


def _tiny_model(family: str, sizes=(2, 4, 8)) -> DDiTModel:
    fam = family_by_name(family)
    return randomise_ddit(DDiTModel(fam, fam.tiny(), list(sizes)).eval())


@pytest.mark.parametrize("family, shape", [("flux", (1, 16, 16, 16)), ("wan", (2, 16, 2, 12, 20))])
def test_eager_chain_equals_the_merged_engine_and_the_base_bit_for_bit(family, shape, torch_single_thread):
    model = _tiny_model(family)
    staged = build_staged(model, shape, 8)
    for patch in (2, 4, 8):
        engine = build_engine(model, patch, shape, 8)
        inputs = engine.sample_inputs(torch.float32, seed=patch)
        with torch.no_grad():
            want = engine(**inputs)
            # As exported graphs run it: the size index as a tensor, every adapter computed and scaled.
            gathered = chain(staged.part_callables(patch), {**inputs, "size_index": staged.size_index(patch)})
            got = staged(patch, inputs.pop("latent"), **inputs)
        for out in (got, gathered["prediction"]):
            if patch == 2:
                assert torch.equal(out, want), "the base path must stay the untouched model"
            else:
                assert 0 < (out - want).abs().max() < 1e-5  # unmerged vs merged LoRA: rounding only


def test_trunk_holds_each_base_weight_once_for_all_sizes():
    model = _tiny_model("flux")
    staged = build_staged(model, (1, 16, 16, 16), 8)
    base = {t.data_ptr() for t in model.transformer.parameters()}
    trunk = [(n, t) for n, t in staged.trunk.named_parameters() if "lora_" not in n]
    assert trunk and all(t.data_ptr() in base for _, t in trunk), "the trunk must not copy a base weight"
    embeds = [dict(e.named_parameters()) for e in staged.embeds.values()]
    shared = [k for k in embeds[0] if k.startswith("context_embedder")]
    assert shared and all(embeds[0][k] is e[k] for e in embeds[1:] for k in shared)


@pytest.fixture(scope="module")
def flux_pack(tmp_path_factory):
    path = tmp_path_factory.mktemp("pack") / "adapters"
    save_adapter_pack(_tiny_model("flux"), path, base_model="tiny")
    return path


@pytest.fixture(scope="module")
def flux_folders(tmp_path_factory, flux_pack):
    """The same tiny FLUX model with random adapters, exported in both layouts."""
    root = tmp_path_factory.mktemp("layouts")
    torch.set_num_threads(1)
    common = ["flux", "--model", "tiny", "--patch-sizes", "2,4,8", "--adapters", str(flux_pack), *FLUX_GEOMETRY]
    for layout in ("single", "staged"):
        assert main([*common, "--layout", layout, "--out", str(root / layout)]) == 0
    return root


def _inputs(backend, seed=0):
    gen = torch.Generator().manual_seed(seed)
    cond = {t.name: torch.randn(t.shape, generator=gen) for t in backend.io_spec.inputs}
    cond["timestep"] = torch.full(cond["timestep"].shape, 0.6)
    return cond.pop("latent"), cond


def test_staged_folder_manifest_hashes_and_validation(flux_folders):
    single, staged = read_manifest(flux_folders / "single"), read_manifest(flux_folders / "staged")
    assert single["layout"] == "single" and staged["layout"] == "staged"
    assert staged["io"] == single["io"], "both layouts take and return the same tensors"
    files = {f for e in staged["engines"] for f in e["files"]}
    assert files == {"staged/trunk.onnx", *(f"staged/{p}_p{s}.onnx" for p in ("embed", "head") for s in (2, 4, 8))}
    for e in staged["engines"]:
        assert e["sha256"] == [sha256_file(flux_folders / "staged" / f) for f in e["files"]]
        v = e["validation"]
        assert v["passed"] and set(v["parts"]) == {"embed", "trunk", "head"}
        assert all(part["passed"] for part in v["parts"].values())
    trunk_io = staged["engines"][0]["parts_io"]["trunk"]
    assert [t["name"] for t in trunk_io["outputs"]] == ["trunk_tokens", "block_residual"]
    assert trunk_io["inputs"][0]["shape"][1] == "tokens", "one trunk graph for every token count"


@pytest.mark.parametrize("name", ["onnx", "torch"])
def test_staged_backend_matches_the_single_engine_of_each_size(flux_folders, name):
    with get_backend(name, flux_folders / "single") as single, get_backend(name, flux_folders / "staged") as staged:
        assert staged.patch_sizes == single.patch_sizes == (2, 4, 8)
        assert staged.conditioning_names == single.conditioning_names
        latent, cond = _inputs(single)
        for patch in (2, 4, 8):
            want, got = single(patch, latent, **cond), staged(patch, latent, **cond)
            cosine = torch.nn.functional.cosine_similarity(want.flatten(), got.flatten(), dim=0)
            assert (want - got).abs().max() < 1e-4 and cosine > 0.9999, patch


def test_onnx_chain_shares_the_size_independent_weights(flux_folders):
    with get_backend("onnx", flux_folders / "staged") as backend:
        pool = backend.chain.shared
        assert pool.bytes > 0
        embeds = [backend.chain.files[0, p]["embed"] for p in (2, 4, 8)]
        assert all(pool.shared_in(path) >= 2 for path in embeds)  # at least the text embedder's weight and bias


def test_reuse_force_and_an_altered_trunk(flux_folders, flux_pack, tmp_path):
    out = tmp_path / "staged"
    shutil.copytree(flux_folders / "staged", out)
    args = ["flux", "--model", "tiny", "--patch-sizes", "2,4,8", "--adapters", str(flux_pack), *FLUX_GEOMETRY,
            "--layout", "staged", "--out", str(out)]
    assert main(args) == 0
    assert all(e.get("reused") for e in read_manifest(out)["engines"])
    (out / "staged" / "trunk.onnx").write_bytes(b"not a graph")
    with pytest.raises(Exception, match="does not match its manifest"):
        get_backend("onnx", out)
    assert main([*args, "--force"]) == 0
    assert not any(e.get("reused") for e in read_manifest(out)["engines"])
    get_backend("onnx", out).close()


@pytest.mark.parametrize("extra, message", [
    (["--layout", "stacked"], "--layout must be one of single, staged (got stacked)"),
    (["--layout", "staged", "--batch", "0"], "argument --batch: must be an integer from 1 to 64"),
    (["--layout", "Staged"], "--layout must be one of single, staged (got Staged)"),
])
def test_bad_layout_input_is_one_line_exit_2_and_no_output(tmp_path, cli, extra, message):
    out = tmp_path / "x"
    err = cli.refuses("flux", "--model", "tiny", *FLUX_GEOMETRY, *extra, "--out", out, naming=(message,))
    assert err.startswith("ddit-export") and "error:" in err  # argparse's refusal names the subcommand
    assert not out.exists()


def test_a_folder_from_before_layouts_still_loads_as_single(flux_folders, tmp_path):
    out = tmp_path / "old"
    shutil.copytree(flux_folders / "single", out)
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["layout"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    with get_backend("onnx", out) as backend:
        assert type(backend).__name__ == "OnnxRuntimeBackend"


def test_wan_batch_two_with_padding_matches_the_single_engines(tmp_path):
    """Wan, CFG batch 2, a 12x20 latent grid that size 8 pads to 16x24."""
    pack = tmp_path / "pack"
    save_adapter_pack(_tiny_model("wan", (2, 8)), pack, base_model="tiny")
    common = ["wan", "--model", "tiny", "--patch-sizes", "2,8", "--batch", "2", "--adapters", str(pack), *WAN_GEOMETRY]
    torch.set_num_threads(1)
    for layout in ("single", "staged"):
        assert main([*common, "--layout", layout, "--out", str(tmp_path / layout)]) == 0
    entry = read_manifest(tmp_path / "staged")["engines"][1]
    assert entry["padded_grid"] == [16, 24] and entry["validation"]["passed"]
    with get_backend("onnx", tmp_path / "single") as single, get_backend("onnx", tmp_path / "staged") as staged, \
            get_backend("torch", tmp_path / "staged") as eager:
        latent, cond = _inputs(single)
        assert latent.shape[0] == 2
        for patch in (2, 8):
            want = single(patch, latent, **cond)
            assert (want - staged(patch, latent, **cond)).abs().max() < 1e-4
            assert (want - eager(patch, latent, **cond)).abs().max() < 1e-4


def test_torch_compile_shares_one_compiled_trunk_and_matches_eager(flux_folders):
    """One size only: each part compiles on first use, ~1 min of CPU per size here."""
    with get_backend("torch", flux_folders / "staged") as eager, \
            get_backend("torch-compile", flux_folders / "staged") as compiled:
        trunks = {id(parts["trunk"][0]) for parts in compiled._parts.values()}
        assert len(trunks) == 1, "every size must call the same compiled trunk (one set of weights)"
        latent, cond = _inputs(eager)
        assert (compiled(8, latent, **cond) - eager(8, latent, **cond)).abs().max() < 1e-4


def test_bf16_parts_agree_on_the_dtype_of_every_value_they_pass(tmp_path):
    out = tmp_path / "bf16"
    torch.set_num_threads(1)
    assert main(["flux", "--model", "tiny", "--patch-sizes", "2,4", "--height", "128", "--width", "128",
                 "--text-len", "8", "--dtype", "bf16", "--layout", "staged", "--out", str(out)]) == 0
    for entry in read_manifest(out)["engines"]:
        io = entry["parts_io"]
        produced = {t["name"]: t["dtype"] for part in ("embed", "trunk") for t in io[part]["outputs"]}
        for part in ("trunk", "head"):
            for t in io[part]["inputs"]:
                if t["name"] in produced:
                    assert t["dtype"] == produced[t["name"]], (part, t)
        assert produced["rope_cos"] == "float32" and produced["tokens"] == "bfloat16"
        assert entry["validation"]["validated_as"] == "fp32-twin" and entry["validation"]["passed"]
    with get_backend("torch", out) as eager:
        latent, cond = _inputs(eager)
        assert eager(4, latent, **cond).dtype == torch.bfloat16


def test_aoti_packages_share_one_weights_file_and_match_onnx(tmp_path):
    """Packages are compiled without constants (~1 min of CPU for 6 parts here) and all point at the
    tensors of `staged/weights.safetensors`."""
    from ddit_export.bench.memory import weight_bytes

    out = tmp_path / "aoti"
    torch.set_num_threads(1)
    assert main(["flux", "--model", "tiny", "--patch-sizes", "2,8", *FLUX_GEOMETRY, "--layout", "staged",
                 "--backends", "onnx,aoti", "--out", str(out)]) == 0
    entries = [e for e in read_manifest(out)["engines"] if e["backend"] == "aoti"]
    assert [e["files"][-1] for e in entries] == ["staged/weights.safetensors"] * 2
    assert all(e["validation"]["passed"] and set(e["validation"]["parts"]) == {"embed", "trunk", "head"}
               for e in entries)
    with get_backend("onnx", out) as ref, get_backend("aoti", out) as aoti, get_backend("torch", out) as eager:
        assert weight_bytes(aoti) == weight_bytes(eager), "every package must read the one set of weights"
        latent, cond = _inputs(ref)
        for patch in (2, 8):
            assert (aoti(patch, latent, **cond) - ref(patch, latent, **cond)).abs().max() < 1e-4


def test_bench_reports_resident_weights_per_layout(flux_folders, tmp_path):
    rows = {}
    for layout in ("single", "staged"):
        out = tmp_path / layout
        assert main(["bench", str(flux_folders / layout), "--backends", "onnx,torch", "--warmup", "0", "--iters", "1",
                     "--no-e2e", "--out", str(out)]) == 0
        report = json.loads((out / "bench.json").read_text())
        rows.update({(m["layout"], m["backend"]): m for m in report["memory"]})
        assert "Resident memory after loading all sizes" in (out / "bench.md").read_text()
    assert all(m["sizes"] == [2, 4, 8] for m in rows.values())
    # ONNX Runtime sessions of single engines share nothing; the staged chain holds one model (at this
    # tiny preset most bytes are the size-8 residual, 1024 x 1024, which both layouts hold once).
    assert 0 < rows["staged", "onnx"]["weight_bytes"] < rows["single", "onnx"]["weight_bytes"]
    # Both staged backends hold the same one set of tensors (counted from graphs vs from modules).
    assert rows["staged", "torch"]["weight_bytes"] == pytest.approx(rows["staged", "onnx"]["weight_bytes"], rel=0.02)
