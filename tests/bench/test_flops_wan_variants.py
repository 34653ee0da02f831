"""The Wan FLOP formula on the variants (I2V's condition channels and image K/V, FLF2V, TI2V's 48 channels),
checked against torch's FLOP counter on the eager engines."""

from __future__ import annotations

import pytest
import torch

from ddit_export.ddit.merge import build_engine
from ddit_export.ddit.model import DDiTModel
from ddit_export.families.wan import WAN
from ddit_export.pipelines.registry import pipeline_by_family
from tests.wan_variants import FLF2V_CONFIG, I2V_CONFIG, TI2V_CONFIG, transformer


@pytest.mark.parametrize("config, shape", [(I2V_CONFIG, (1, 16, 2, 4, 6)), (FLF2V_CONFIG, (1, 16, 2, 4, 6)),
                                           (TI2V_CONFIG, (1, 48, 2, 4, 6))])
def test_flop_formula_matches_torch_flop_counter(config, shape, torch_single_thread):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    model = DDiTModel(WAN, transformer(config), [2, 4]).eval()
    for patch in (2, 4):
        engine = build_engine(model, patch, shape, 8)
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            engine(**engine.sample_inputs(torch.float32))
        ours = pipeline_by_family("wan").flops(dict(model.config), WAN.tokens(shape, patch), 8, patch,
                                               residual=patch != 2)
        assert ours["total"] == counter.get_total_flops()
