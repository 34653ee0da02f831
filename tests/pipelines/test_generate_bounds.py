"""`generate` and the conditioning refuse from Python what the command line refuses while parsing (util/limits.py):
steps out of bounds (before any allocation) and guidance that is not a finite number >= 0."""

import math

import pytest

from ddit_export.pipelines import generate, make_conditioning
from ddit_export.runtime.conditioning import Conditioning
from ddit_export.runtime.runner import schedule_config
from ddit_export.util.limits import MAX_STEPS


@pytest.mark.parametrize("steps, words", [(0, "from 1 to"), (MAX_STEPS + 1, "from 1 to"), (10**9, "from 1 to"),
                                          (True, "from 1 to"), (2.5, "takes an integer")])
def test_generate_refuses_steps_out_of_bounds(tiny_flux_backends, steps, words):
    backend = tiny_flux_backends["onnx"]
    cond = make_conditioning(backend.manifest, "a cat")
    with pytest.raises(ValueError, match=f"^steps .*{words}"):
        generate(backend, cond, schedule_config(backend), steps=steps)


@pytest.mark.parametrize("guidance", [math.nan, math.inf, -1.0, "3.5x"])
def test_guidance_must_be_a_finite_number_at_least_0(tiny_flux_backends, guidance):
    backend = tiny_flux_backends["onnx"]
    with pytest.raises(ValueError, match="^guidance "):
        make_conditioning(backend.manifest, "a cat", guidance)
    good = make_conditioning(backend.manifest, "a cat", 3.5)
    with pytest.raises(ValueError, match="^guidance "):
        Conditioning(good.encoder_hidden_states, good.pooled_projections, guidance, source="test")


def test_valid_settings_still_sample(tiny_flux_backends):
    backend = tiny_flux_backends["onnx"]
    result = generate(backend, make_conditioning(backend.manifest, "a cat", 0.0), schedule_config(backend), steps=2)
    assert len(result.trace.schedule) == 2
