"""`--resolutions`: one folder, several resolution buckets; the staged layout keeps one trunk for all of them."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from ddit_export.artifacts.layouts import TRUNK_ONNX
from ddit_export.artifacts.manifest import read_manifest
from ddit_export.export.request import ExportRequest
from ddit_export.runtime.backends import get_backend
from tests.conftest import TINY_BUCKETS

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.mark.parametrize("spec, words", [
    ("64x64,48x9a", ("'48x9a' is not HEIGHTxWIDTH",)),
    ("64x64,64x64", ("64x64 twice",)),
    ("64x64,0x64", ("--resolutions", "height must be an integer from 1",)),
])
def test_a_bad_spec_is_refused_in_one_line(cli, spec, words):
    cli.refuses("flux", "--model", "tiny", "--resolutions", spec, naming=words)


def test_a_bucket_the_model_cannot_build_is_refused_before_any_work(cli, tmp_path):
    out = tmp_path / "never"
    cli.refuses("flux", "--model", "tiny", "--resolutions", "64x64,50x64", "--out", str(out), naming=("50",))
    assert not out.exists()


def test_height_width_disagreeing_with_the_first_bucket_is_refused():
    with pytest.raises(ValueError, match="first bucket is the default"):
        ExportRequest(model="tiny", height=32, width=32, resolutions="64x64,48x96")


def test_one_bucket_is_a_plain_folder():
    one = ExportRequest(model="tiny", resolutions="64x64")
    assert one.resolutions is None and (one.height, one.width) == (64, 64)
    assert "resolutions" not in one.identity()


def test_staged_buckets_share_one_trunk_file(tiny_flux_bucket_engines):
    manifest = read_manifest(tiny_flux_bucket_engines)
    assert [(b.height, b.width) for b in manifest.buckets] == list(TINY_BUCKETS)
    trunks, embeds = set(), set()
    for b in manifest.buckets:
        view = manifest.at_bucket(b.height, b.width)
        assert view.latent_shape == b.latent_shape and view["io"]["inputs"][0]["shape"] == list(b.latent_shape)
        for entry in view.engines_of("onnx").values():
            trunks.add(entry["files"][1])
            embeds.add(entry["files"][0])
            v = entry["validation"]  # the export validated every bucket's chain and parts against PyTorch
            assert v["passed"] and set(v["parts"]) == {"embed", "trunk", "head"}
    assert trunks == {TRUNK_ONNX} and len(embeds) == 4
    assert not list(tiny_flux_bucket_engines.glob("buckets/*/staged/trunk*"))
    tokens = {b.name: manifest.at_bucket(b.height, b.width).tokens for b in manifest.buckets}
    assert tokens == {"64x64": {2: 16, 4: 4}, "48x96": {2: 18, 4: 6}}  # 48x96 pads 6x12 -> 8x12 at p4


def test_an_unchanged_bucketed_export_is_reused(tiny_flux_bucket_engines, tmp_path, cli):
    out = tmp_path / "copy"
    shutil.copytree(tiny_flux_bucket_engines, out)
    code, _ = cli("flux", "--model", "tiny", "--patch-sizes", "2,4", "--resolutions", "64x64,48x96",
                  "--text-len", "8", "--layout", "staged", "--backends", "onnx", "--out", str(out))
    assert code == 0
    manifest = read_manifest(out)
    assert all(e.get("reused") for e in manifest.all_engines) and len(manifest.all_engines) == 4


def test_single_layout_buckets_have_their_own_engines(tmp_path, cli, capsys):
    from ddit_export.cli import main

    out = tmp_path / "single"
    code, _ = cli("flux", "--model", "tiny", "--patch-sizes", "2,4", "--resolutions", "64x64,48x96",
                  "--text-len", "8", "--backends", "onnx", "--out", str(out))
    assert code == 0
    manifest = read_manifest(out)
    files = [e["files"][0] for e in manifest.all_engines]
    assert files == ["onnx/p2.onnx", "onnx/p4.onnx", "buckets/48x96/onnx/p2.onnx", "buckets/48x96/onnx/p4.onnx"]
    assert all((out / f).is_file() for f in files)
    assert main(["inspect", str(out)]) == 0
    text = " ".join(capsys.readouterr().out.split())  # rich wraps lines
    assert "48x96" in text and "one copy of the weights per engine (4 engines" in text


def test_folders_from_before_buckets_read_as_one_bucket(tiny_flux_engines):
    manifest = read_manifest(tiny_flux_engines)
    raw = json.loads((tiny_flux_engines / "manifest.json").read_text())
    assert "buckets" in raw  # written since buckets; an older folder has none:
    del raw["buckets"]
    from ddit_export.artifacts.manifest import Manifest

    old = Manifest(raw)
    assert [(b.name, b.latent_shape) for b in old.buckets] == [("128x128", manifest.latent_shape)]
    assert old.at_bucket() is old and old.at_bucket(128, 128) is old


def test_wan_buckets_share_one_trunk_and_match_torch(tmp_path, cli):
    import torch

    from ddit_export.runtime.backends import get_backend

    out = tmp_path / "wan"
    code, _ = cli("wan", "--model", "tiny", "--patch-sizes", "2,4", "--resolutions", "96x160,160x96",
                  "--layout", "staged", "--backends", "onnx", "--out", str(out))
    assert code == 0
    manifest = read_manifest(out)
    assert [b.latent_shape[-2:] for b in manifest.buckets] == [(12, 20), (20, 12)]
    assert {e["files"][1] for e in manifest.all_engines} == {TRUNK_ONNX}
    for bucket in ((96, 160), (160, 96)):
        with get_backend("onnx", out, bucket=bucket) as onnx, get_backend("torch", out, bucket=bucket) as eager:
            gen = torch.Generator().manual_seed(0)
            cond = {t.name: torch.randn(t.shape, generator=gen) for t in onnx.io_spec.inputs}
            cond["timestep"] = torch.full(cond["timestep"].shape, 500.0)
            latent = cond.pop("latent")
            for p in (2, 4):
                assert (onnx(p, latent, **cond) - eager(p, latent, **cond)).abs().max() < 1e-4, (bucket, p)


def test_staged_aoti_buckets_compile_per_bucket_on_one_weights_file_and_match_onnx(tmp_path, cli):
    """AOTInductor on a bucketed staged folder: one package per (bucket, part) shape, every package reading the
    one `staged/weights.safetensors`, each bucket's chain equal to ONNX Runtime's at that bucket."""
    from ddit_export.bench.memory import weight_bytes

    out = tmp_path / "aoti"
    code, err = cli("flux", "--model", "tiny", "--patch-sizes", "2,4", "--resolutions", "64x64,48x96", "--text-len",
                    "8", "--dtype", "fp32", "--layout", "staged", "--artifacts", "onnx,aoti", "--out", out)
    assert code == 0, err
    manifest = read_manifest(out)
    with get_backend("aoti", out, bucket=TINY_BUCKETS[0]) as first, get_backend("aoti", out, bucket=TINY_BUCKETS[1]) \
            as second:
        assert first.weights is second.weights, "every bucket's packages read one set of tensors"
    for h, w in TINY_BUCKETS:
        entries = [e for e in manifest.at_bucket(h, w)["engines"] if e["backend"] == "aoti"]
        assert len(entries) == 2 and all(e["validation"]["passed"] for e in entries), (h, w)
        assert all(e["files"][-1] == "staged/weights.safetensors" for e in entries)
        with get_backend("onnx", out, bucket=(h, w)) as ref, get_backend("aoti", out, bucket=(h, w)) as aoti, \
                get_backend("torch", out, bucket=(h, w)) as eager:
            # one model's weights, plus the other bucket's RoPE tables (the file holds every bucket's)
            assert weight_bytes(eager) <= weight_bytes(aoti) < 1.01 * weight_bytes(eager)
            gen = torch.Generator().manual_seed(0)
            feeds = {t.name: torch.randn(t.shape, generator=gen) for t in ref.io_spec.inputs}
            latent = feeds.pop("latent")
            assert latent.shape[-2:] == (h // 8, w // 8)
            for patch in (2, 4):
                assert (aoti(patch, latent, **feeds) - ref(patch, latent, **feeds)).abs().max() < 1e-4
