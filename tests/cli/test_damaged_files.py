"""Damaged or wrong files handed to a command: one line naming the file, exit 2, nothing written.

Covers model folders, adapter packs (recipes: test_recipes.py), engine folders whose damage the sha256 check cannot
see (a manifest rewritten to match a corrupt graph or truncated weights, a manifest missing keys or
disagreeing with itself, a manifest that is not UTF-8 JSON), and engines a backend cannot run.
"""

import json
import shutil

import pytest
from safetensors.torch import load_file, save_file

from ddit_export.artifacts.manifest import sha256_file
from ddit_export.export.build import export_engines
from ddit_export.export.request import ExportRequest

TINY = ["flux", "--model", "tiny", "--height", "64", "--width", "64", "--text-len", "8"]


@pytest.fixture(scope="module")
def small_engines(tmp_path_factory):
    """Sizes 2 and 4 at 64x64 with weights in external data files, so both files can be damaged."""
    out = tmp_path_factory.mktemp("small") / "engines"
    export_engines(ExportRequest(model="tiny", patch_sizes=(2, 4), height=64, width=64, text_len=8, dtype="fp32",
                                 external_data=True, out=str(out)))
    return out


@pytest.fixture
def damaged(small_engines, tmp_path):
    """A private copy of the engines and a function that rewrites its manifest."""
    folder = tmp_path / "engines"
    shutil.copytree(small_engines, folder)

    def edit(change):
        manifest = json.loads((folder / "manifest.json").read_text())
        change(manifest)
        (folder / "manifest.json").write_text(json.dumps(manifest))

    return folder, edit


def _rehash(folder, manifest):
    """Make the manifest's sha256 agree with a damaged file (what a careless repair would do)."""
    for entry in manifest["engines"]:
        entry["sha256"] = [sha256_file(folder / f) for f in entry["files"]]
    return manifest


def test_corrupt_graph_or_truncated_weights_with_matching_hashes_are_refused(cli, damaged, tmp_path):
    folder, edit = damaged
    for damage in ("data", "graph"):  # the data first: a damaged graph hides its data file
        entry = json.loads((folder / "manifest.json").read_text())["engines"][0]
        graph = folder / entry["files"][0]
        if damage == "graph":
            graph.write_bytes(b"not a protobuf" * 10)
            naming = (f"{graph} is not a readable ONNX graph", "--force")
        else:  # the line names the short file itself, not only the folder
            data = next(folder / f for f in entry["files"] if f.endswith(".data"))
            data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
            naming = (f"{data} is truncated", "--force")
        edit(lambda m: _rehash(folder, m))
        cli.refuses("generate", folder, "--steps", "4", "--out", tmp_path / "gen", naming=naming)
        assert not (tmp_path / "gen").exists()


@pytest.mark.parametrize("damage, words", [
    (lambda m: m.pop("io"), "'io' is missing"),
    (lambda m: m.update(patch_sizes=[2, 4, 8]), "onnx engines for [2, 4]"),
    (lambda m: m["engines"][0].pop("sha256"), "'sha256' is missing"),
    (lambda m: m.update(latent_shape=[1, 16, "8", 8]), "latent_shape"),
])
def test_inconsistent_manifest_is_refused_by_every_reader(cli, damaged, tmp_path, damage, words):
    folder, edit = damaged
    edit(damage)
    for argv in (["inspect", folder], ["generate", folder, "--out", tmp_path / "gen"],
                 ["bench", folder, "--out", tmp_path / "bench"], [*TINY, "--out", folder]):
        cli.refuses(*argv, naming=("manifest.json", words))
    assert not (tmp_path / "gen").exists() and not (tmp_path / "bench").exists()


@pytest.mark.parametrize("content, words", [(b"\xff\xfe\x00{", "UTF-8 JSON"), (b'{"format": 1,', "UTF-8 JSON"),
                                            (b"[1, 2]", "JSON object")])
def test_manifest_that_is_not_json_is_named(cli, damaged, tmp_path, content, words):
    folder, _ = damaged
    (folder / "manifest.json").write_bytes(content)
    for argv in (["inspect", folder], ["generate", folder, "--out", tmp_path / "gen"], [*TINY, "--out", folder]):
        cli.refuses(*argv, naming=("manifest.json", words))


def test_half_engines_on_onnx_runtime_cpu_say_what_to_do(cli, tmp_path):
    engines = tmp_path / "bf16"
    export_engines(ExportRequest(model="tiny", patch_sizes=(2,), height=64, width=64, text_len=8, dtype="bf16",
                                 out=str(engines)))
    for argv in (["generate", engines, "--out", tmp_path / "gen"],
                 ["bench", engines, "--backends", "onnx", "--out", tmp_path / "bench"],
                 ["calibrate", engines, "--out", tmp_path / "cal"]):
        cli.refuses(*argv, naming=("bf16", "--backend torch", "--dtype fp32"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bf16"]


@pytest.mark.parametrize("damage, words", [
    ("bad-json", "config.json is not valid JSON"),
    ("no-weights", "has a config.json but no weights"),
    ("truncated-weights", "cannot be loaded as a FluxTransformer2DModel"),
])
def test_unloadable_model_folder_is_named(cli, tmp_path, damage, words):
    from ddit_export.families.flux import FLUX

    model = tmp_path / "model"
    FLUX.tiny().save_pretrained(model)
    if damage == "bad-json":
        (model / "config.json").write_text('{"num_layers": 1,')
    else:
        for weights in model.glob("*.safetensors"):
            weights.unlink() if damage == "no-weights" else weights.write_bytes(weights.read_bytes()[:100])
    cli.refuses("flux", "--model", model, "--height", "64", "--width", "64", "--out", tmp_path / "out",
                naming=(str(model), words))
    assert not (tmp_path / "out").exists()


@pytest.fixture
def pack(tmp_path):
    from ddit_export.ddit.adapter_pack import save_adapter_pack
    from ddit_export.ddit.model import DDiTModel
    from ddit_export.families.flux import FLUX

    return save_adapter_pack(DDiTModel(FLUX, FLUX.tiny(), [2, 4], lora_rank=4), tmp_path / "pack", base_model="tiny")


def _truncate(pack):
    weights = pack / "adapters.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])


def _drop_tensor(pack):
    tensors = load_file(pack / "adapters.safetensors")
    del tensors[next(k for k in tensors if ".lora." in k)]
    save_file(tensors, pack / "adapters.safetensors")


def _edit_meta(change):
    def apply(pack):
        meta = json.loads((pack / "adapters.json").read_text())
        change(meta)
        (pack / "adapters.json").write_text(json.dumps(meta))
    return apply


@pytest.mark.parametrize("damage, words", [
    (_truncate, "damaged or truncated"),
    (_drop_tensor, "lacks LoRA weights"),
    (_edit_meta(lambda m: m.update(lora_rank=8)), "does not match adapters.json"),
    (_edit_meta(lambda m: m.update(trained_on="yesterday")), "unknown keys ['trained_on']"),
    (_edit_meta(lambda m: m.update(lora_rank="four")), "wrong value types for ['lora_rank']"),
    (lambda pack: (pack / "adapters.json").write_text("{"), "adapters.json is not valid JSON"),
])
def test_damaged_adapter_pack_is_named(cli, pack, tmp_path, damage, words):
    damage(pack)
    cli.refuses(*TINY, "--patch-sizes", "2,4", "--adapters", pack, "--out", tmp_path / "out",
                naming=(str(pack), words))
    assert not (tmp_path / "out").exists()
