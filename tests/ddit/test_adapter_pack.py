"""Adapter pack: round trip, and a clear refusal for every way a pack can not fit."""

import json

import pytest
import torch

from ddit_export.ddit.adapter_pack import AdapterPackError, load_adapter_pack, read_meta, save_adapter_pack
from ddit_export.ddit.model import DDiTModel
from ddit_export.families.flux import FLUX, FLUX_TINY_CONFIG
from tests.ddit.test_ddit_model import LATENT, conditioning, randomise_ddit


def other_tiny():
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(**{**FLUX_TINY_CONFIG, "num_single_layers": 2})


@pytest.fixture()
def saved(tmp_path):
    model = randomise_ddit(DDiTModel(FLUX, FLUX.tiny(), [2, 4, 8], lora_rank=8).eval())
    save_adapter_pack(model, tmp_path / "pack", base_model="tiny")
    return model, tmp_path / "pack"


def test_round_trip_restores_every_trained_tensor(saved):
    model, path = saved
    meta = read_meta(path)
    assert (meta.family, meta.base_model, meta.patch_sizes, meta.lora_rank) == ("flux", "tiny", [4, 8], 8)
    fresh = DDiTModel(FLUX, FLUX.tiny(), [2, 4, 8], lora_rank=8).eval()
    load_adapter_pack(fresh, path)
    latent, cond = torch.randn(LATENT), conditioning()
    with torch.no_grad():
        for p in (4, 8):
            assert torch.equal(fresh(latent, p, **cond), model(latent, p, **cond))


def test_a_subset_of_sizes_loads(saved):
    _, path = saved
    load_adapter_pack(DDiTModel(FLUX, FLUX.tiny(), [2, 4], lora_rank=8), path)


def test_pack_for_another_model_is_refused_with_the_reason(saved):
    _, path = saved
    with pytest.raises(AdapterPackError, match="trained for model 'tiny'"):
        load_adapter_pack(DDiTModel(FLUX, other_tiny(), [2, 4], lora_rank=8), path)


def test_pack_lacking_a_requested_size_is_refused(tmp_path):
    model = DDiTModel(FLUX, FLUX.tiny(), [2, 4], lora_rank=8)
    save_adapter_pack(model, tmp_path / "p4only", base_model="tiny")
    with pytest.raises(AdapterPackError, match=r"no adapter for patch size\(s\) \[8\]"):
        load_adapter_pack(DDiTModel(FLUX, FLUX.tiny(), [2, 4, 8], lora_rank=8), tmp_path / "p4only")


def test_rank_mismatch_and_non_packs_are_refused(saved, tmp_path):
    _, path = saved
    with pytest.raises(AdapterPackError, match="rank 8"):
        load_adapter_pack(DDiTModel(FLUX, FLUX.tiny(), [2, 4], lora_rank=4), path)
    with pytest.raises(AdapterPackError, match="is not an adapter pack"):
        read_meta(tmp_path)


def test_saving_replaces_atomically_and_leaves_no_temporary_folder(saved):
    model, path = saved
    save_adapter_pack(model, path, base_model="tiny")  # overwrite in place
    assert sorted(p.name for p in path.parent.iterdir()) == ["pack"]
    assert json.loads((path / "adapters.json").read_text())["format"] == 1
