"""`ddit-export generate --lora FILE[:SCALE]`: the LoRA changes the image, is recorded, and bad input is one line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ddit_export.cli import main
from tests.runtime.loras.helpers import peft_lora

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def _generate(engines, out, *extra):
    return main(["generate", str(engines), "--steps", "4", "--out", str(out), *extra])


def test_lora_changes_the_latent_and_the_trace_records_it(tiny_flux_staged_engines, tmp_path):
    lora = peft_lora(tmp_path / "style.safetensors", seed=1)
    assert _generate(tiny_flux_staged_engines, tmp_path / "plain") == 0
    assert _generate(tiny_flux_staged_engines, tmp_path / "styled", "--lora", f"{lora}:0.5") == 0
    plain, styled = (np.load(tmp_path / d / "latent.npy") for d in ("plain", "styled"))
    assert not np.array_equal(plain, styled)
    trace = json.loads((tmp_path / "styled" / "trace.json").read_text())
    assert trace["loras"] == [{"name": "style", "path": str(lora), "scale": 0.5}]
    assert json.loads((tmp_path / "plain" / "trace.json").read_text())["loras"] == []


def test_bad_lora_arguments_are_one_line(tiny_flux_engines, tiny_flux_staged_engines, tmp_path, cli):
    lora = peft_lora(tmp_path / "style.safetensors", seed=1)
    cli.refuses("generate", str(tiny_flux_staged_engines), "--lora", str(tmp_path / "missing.safetensors"),
                naming=("missing.safetensors", "no such file"))
    cli.refuses("generate", str(tiny_flux_engines), "--lora", str(lora), naming=("--layout staged",))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"junk")
    cli.refuses("generate", str(tiny_flux_staged_engines), "--lora", str(bad), "--out", str(tmp_path / "o"),
                naming=(str(bad), "diffusers cannot read"))
    assert not (tmp_path / "o").exists()
