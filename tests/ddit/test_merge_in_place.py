"""`adapter_merged_in_place`: the engine built on the in-place merge is the merged engine, and the model's
weights are the same bits afterwards, also when the block fails."""

import pytest
import torch

from ddit_export.ddit.merge import _lora_layers, adapter_merged_in_place, build_engine
from ddit_export.ddit.model import DDiTModel
from ddit_export.families.registry import family_by_name

SHAPE, TEXT = (1, 16, 16, 16), 8


@pytest.fixture
def trained_model():
    fam = family_by_name("flux")
    model = DDiTModel(fam, fam.tiny(), [2, 4])
    torch.manual_seed(1)
    for layer in _lora_layers(model.transformer).values():
        for lora_b in layer.lora_B.values():  # a trained-looking adapter: the merge must change the weights
            torch.nn.init.normal_(lora_b.weight)
    return model


def _weights(model):
    return {k: v.clone() for k, v in model.transformer.state_dict().items()}


def test_in_place_merge_gives_the_merged_engine_and_restores_every_bit(trained_model, tmp_path):
    before = _weights(trained_model)
    copied = build_engine(trained_model, 4, SHAPE, TEXT)  # the merged copies of `merged_transformer`
    inputs = copied.sample_inputs(torch.float32, seed=4)
    with torch.no_grad():
        expected = copied(**inputs)
    del copied
    with adapter_merged_in_place(trained_model, 4, tmp_path):
        changed = [k for k, v in trained_model.transformer.state_dict().items() if not torch.equal(v, before[k])]
        engine = build_engine(trained_model, 4, SHAPE, TEXT, already_merged=True)
        with torch.no_grad():
            got = engine(**inputs)
        del engine
    assert changed and all("base_layer" in k for k in changed)  # exactly the adapted linears were merged
    assert torch.equal(got, expected)
    after = trained_model.transformer.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert list(tmp_path.iterdir()) == []  # the spill file is gone


def test_weights_are_restored_when_the_block_fails(trained_model, tmp_path):
    before = _weights(trained_model)
    with pytest.raises(RuntimeError, match="export failed"), adapter_merged_in_place(trained_model, 4, tmp_path):
        raise RuntimeError("export failed")
    after = trained_model.transformer.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before)


def test_bf16_weights_restore_exactly(trained_model, tmp_path):
    trained_model.to(torch.bfloat16)
    before = _weights(trained_model)
    with adapter_merged_in_place(trained_model, 4, tmp_path):
        pass
    after = trained_model.transformer.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before)
