"""Wan 2.2 A14B: two experts switched at WanPipeline's boundary timestep, exported into one folder and
run with one DDiT schedule across the switch, against stock WanPipeline with both transformers."""

from __future__ import annotations

import json

import pytest
import torch

from ddit_export.cli import main
from ddit_export.pipelines.registry import generate, make_conditioning
from ddit_export.pipelines.wan_dropin import DDiTWanTransformer
from ddit_export.runtime.backends import get_backend
from ddit_export.runtime.runner import schedule_config
from tests.wan_variants import VIDEO, a14b_pipeline, relative

pytestmark = pytest.mark.usefixtures("torch_single_thread")
STEPS = 6
SHAPE = (1, 16, 2, 12, 20)


@pytest.fixture(scope="module")
def a14b(tmp_path_factory):
    root = tmp_path_factory.mktemp("wan_a14b")
    pipe = a14b_pipeline()
    pipe.save_pretrained(root / "model")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code = main(["wan", "--model", str(root / "model"), "--patch-sizes", "2,8", "--dtype", "fp32", "--frames", "5",
                     "--height", "96", "--width", "160", "--text-len", "8", "--backends", "onnx",
                     "--out", str(root / "engines")])
    finally:
        torch.set_num_threads(before)
    assert code == 0
    backend = get_backend("onnx", root / "engines")
    yield pipe, root, backend
    backend.close()


def call(pipe, **kwargs):
    args = dict(prompt="a red fox", negative_prompt="blurry", guidance_scale=5.0, num_inference_steps=STEPS,
                max_sequence_length=8, output_type="latent", generator=torch.Generator().manual_seed(0), **VIDEO)
    return pipe(**{**args, **kwargs}).frames


def test_one_folder_holds_each_experts_engines_per_size(a14b):
    _, root, backend = a14b
    manifest = json.loads((root / "engines" / "manifest.json").read_text())
    assert manifest["experts"]["boundary_ratio"] == 0.875 and manifest["experts"]["boundary_timestep"] == 875.0
    second = json.loads((root / "engines" / "transformer_2" / "manifest.json").read_text())
    assert second["patch_sizes"] == manifest["patch_sizes"] == [2, 8]
    assert second["model"]["id"].endswith("transformer_2") and manifest["model"]["id"] == str(root / "model")
    assert backend.select(900.0) is backend.high and backend.select(875.0) is backend.high  # t >= boundary
    assert backend.select(874.0) is backend.low


@pytest.mark.parametrize("expert", ["transformer", "transformer_2"])
def test_each_experts_base_engine_equals_its_diffusers_forward(a14b, expert):
    pipe, _, backend = a14b
    g = torch.Generator().manual_seed(3)
    latent, text, t = torch.randn(SHAPE, generator=g), torch.randn(1, 8, 32, generator=g), torch.tensor([500.0])
    with torch.no_grad():
        ref = getattr(pipe, expert)(hidden_states=latent, timestep=t, encoder_hidden_states=text, return_dict=False)[0]
    engines = backend.high if expert == "transformer" else backend.low
    assert relative(engines(2, latent, encoder_hidden_states=text, timestep=t), ref) <= 1e-4
    assert torch.isfinite(engines(8, latent, encoder_hidden_states=text, timestep=t)).all()


def test_drop_in_for_both_experts_equals_stock_and_keeps_one_schedule(a14b):
    pipe, _, backend = a14b
    stock = call(pipe)
    real = pipe.transformer, pipe.transformer_2
    try:
        pipe.transformer = pipe.transformer_2 = DDiTWanTransformer(backend, schedule_config(backend, static_patch=2))
        assert relative(call(pipe), stock) <= 1e-4
        pipe.transformer = pipe.transformer_2 = dropin = DDiTWanTransformer(backend, schedule_config(backend, tau=1e9))
        video = call(pipe)
        # one history across the switch: warm-up once, then the statistic's decisions through both experts
        assert dropin.trace.schedule == [2, 2, 2, 8, 8, 8] and dropin.runner.scheduler.observed == STEPS
        assert torch.isfinite(video).all()
    finally:
        pipe.transformer, pipe.transformer_2 = real


def test_generate_switches_experts_like_the_stock_pipeline(a14b):
    pipe, root, backend = a14b
    cond = make_conditioning(backend.manifest, "a red fox", 5.0, negative_prompt="blurry")
    assert cond.source == f"text encoder of {root / 'model'}"
    ours = generate(backend, cond, schedule_config(backend, static_patch=2), steps=STEPS, seed=0).latent
    assert relative(ours, call(pipe)) <= 1e-4  # the folder's scheduler (flow_shift 4), both experts at the boundary
    one_expert = generate(backend.high, cond, schedule_config(backend.high, static_patch=2), steps=STEPS, seed=0)
    assert relative(one_expert.latent, ours) > 1e-3  # the switch matters: the low-noise expert ran


def test_staged_layout_is_refused_in_one_line(a14b, tmp_path, capsys):
    _, root, _ = a14b
    code = main(["wan", "--model", str(root / "model"), "--layout", "staged", "--patch-sizes", "2,8", "--frames", "5",
                 "--height", "96", "--width", "160", "--text-len", "8", "--out", str(tmp_path / "e")])
    err = capsys.readouterr().err.strip()
    assert code != 0 and "two experts" in err and len(err.splitlines()) == 1


def test_the_torch_backend_rebuilds_both_experts(a14b):
    _, root, onnx = a14b
    g = torch.Generator().manual_seed(4)
    latent, text, t = torch.randn(SHAPE, generator=g), torch.randn(1, 8, 32, generator=g), torch.tensor([300.0])
    with get_backend("torch", root / "engines") as eager:
        assert type(eager).__name__ == "ExpertsBackend" and eager.name == "torch"
        for timestep in (950.0, 300.0):  # one step of each expert
            eager.select(timestep)
            onnx.select(timestep)
            want = onnx(8, latent, encoder_hidden_states=text, timestep=t).clone()
            assert relative(eager(8, latent, encoder_hidden_states=text, timestep=t), want) <= 1e-4


def test_generate_command_records_the_expert_of_every_step(a14b, tmp_path):
    _, root, _ = a14b
    assert main(["generate", str(root / "engines"), "--steps", str(STEPS), "--tau", "1e9", "--out",
                 str(tmp_path / "out")]) == 0
    trace = json.loads((tmp_path / "out" / "trace.json").read_text())
    switch = [t >= 875.0 for t in trace["timesteps"]]
    assert trace["experts"] == ["transformer" if high else "transformer_2" for high in switch]
    assert 0 < trace["experts"].count("transformer") < STEPS  # both ran, one schedule: warm-up once
    assert trace["schedule"] == [2, 2, 2, 8, 8, 8]


def test_an_out_folder_holding_other_files_is_left_alone(a14b, tmp_path, cli):
    _, root, _ = a14b
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    cli.refuses("wan", "--model", str(root / "model"), "--patch-sizes", "2,8", "--frames", "5", "--height", "96",
                "--width", "160", "--text-len", "8", "--out", str(out), naming=("--out", "holds no manifest"))
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
