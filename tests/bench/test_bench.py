"""`ddit-export bench`: FLOP formula, report files and keys, tiny Wan per-engine latency, bad input.

Timings are never asserted (a shared CPU): only that they exist, are positive and are reported.
"""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from ddit_export.bench.timing import percentile, rotated, summarize
from ddit_export.commands import bench_cmd
from ddit_export.pipelines.flux import FLUX_PIPELINE

flux_flops = FLUX_PIPELINE.flops

ENGINE_KEYS = {"backend", "patch_size", "tokens", "flops", "mean_ms", "p50_ms", "p95_ms", "p99_ms", "min_ms",
               "std_ms", "iters", "flops_per_s", "speedup_vs_base"}
TOP_KEYS = {"engine_dir", "created", "family", "dtype", "latent_shape", "text_len", "device", "clock", "warmup",
            "iters", "backends", "skipped_backends", "engines", "end_to_end", "peer", "notes", "tools"}
TINY_FLUX = dict(in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
                 joint_attention_dim=32, pooled_projection_dim=16, guidance_embeds=True)


def bench(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    bench_cmd.add_arguments(parser)
    return bench_cmd.run(parser.parse_args(argv))


def test_flux_flops_match_a_hand_count():
    # tiny FLUX, 128x128 image: latent 16x16, base patch 2 -> N = 64 tokens of F = 64 features,
    # T = 8 text tokens, D = 2 heads x 16 = 32, L = N + T = 72.
    embed = 2 * 64 * 64 * 32 + 2 * 8 * 32 * 32  # x_embedder, context_embedder
    cond = 2 * (2 * 256 * 32 + 2 * 32 * 32) + (2 * 16 * 32 + 2 * 32 * 32)  # timestep + guidance, pooled
    double = (2 * (2 * 32 * 192)  # AdaLN-Zero, image and text
              + 2 * 72 * 32 * 96 + 2 * 72 * 32 * 32  # qkv, out (both streams)
              + 4 * 72 * 72 * 32  # Q K^T and A V
              + 2 * (2 * 72 * 32 * 128))  # ff up + down
    single = 2 * 32 * 96 + 2 * 72 * 32 * 96 + 2 * 72 * 32 * 128 + 4 * 72 * 72 * 32 + 2 * 72 * 160 * 32
    output = 2 * 32 * 64 + 2 * 64 * 32 * 64
    got = flux_flops(TINY_FLUX, tokens=64, text_len=8, patch=2, residual=False)
    assert got["total"] == embed + cond + double + single + output == 5_481_472
    assert got["double_blocks"] == double and got["single_blocks"] == single and got["ddit_residual"] == 0
    # A coarse size adds the patch-space residual: 16 tokens x (256 x 256) features.
    assert flux_flops(TINY_FLUX, tokens=16, text_len=8, patch=4, residual=True)["ddit_residual"] == 2 * 16 * 256 * 256
    assert flux_flops(TINY_FLUX, tokens=64, text_len=8, patch=2, residual=False, batch=2)["total"] == 2 * 5_481_472


@pytest.mark.parametrize("family,geometry", [("flux", dict(height=128, width=128)),
                                             ("wan", dict(height=32, width=48, frames=5))])
def test_flop_formula_matches_torch_flop_counter(family, geometry, torch_single_thread):
    """Independent check: torch's FLOP counter on the eager engines (math attention, so it sees the bmm's)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from ddit_export.ddit.loading import load_ddit_model
    from ddit_export.ddit.merge import build_engine
    from ddit_export.export.request import ExportRequest
    from ddit_export.pipelines.registry import pipeline_by_family

    req = ExportRequest(family=family, model="tiny", patch_sizes=(2, 4), text_len=8, dtype="fp32",
                        artifacts=("onnx",), **geometry)
    model = load_ddit_model(req.family_obj, req.model, req.patch_sizes).model
    for patch in (2, 4):
        engine = build_engine(model, patch, req.latent_shape, req.text_len)
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            engine(**engine.sample_inputs(torch.float32))
        tokens = req.family_obj.tokens(req.latent_shape, patch)
        ours = pipeline_by_family(family).flops(dict(model.config), tokens, req.text_len, patch, residual=patch != 2)
        assert ours["total"] == counter.get_total_flops()


def test_summary_percentiles_and_rotation():
    stats = summarize([0.001 * i for i in range(1, 101)])  # 1..100 ms
    assert stats["iters"] == 100 and stats["mean_ms"] == pytest.approx(50.5)
    assert stats["p50_ms"] == pytest.approx(50.5) and stats["p99_ms"] == pytest.approx(99.01)
    assert percentile([1.0, 2.0], 0.5) == 1.5
    assert rotated([1, 2, 3], 1) == [2, 3, 1] and rotated([1, 2, 3], 3) == [1, 2, 3]


def test_bench_tiny_flux_writes_json_markdown_and_plots(tiny_flux_engines, tmp_path, torch_single_thread):
    out = tmp_path / "bench"
    code = bench([str(tiny_flux_engines), "--backends", "onnx,torch", "--warmup", "1", "--iters", "3",
                  "--steps", "5", "--seeds", "0", "--tau", "1.0", "--out", str(out)])
    assert code == 0
    for name in ("bench.json", "bench.md", "latency.png", "schedule.png"):
        assert (out / name).stat().st_size > 0, name
    report = json.loads((out / "bench.json").read_text())
    assert TOP_KEYS <= report.keys() and report["clock"] == "perf_counter"
    assert any(n.startswith("onnx: ONNX Runtime CPU threading chosen per engine by timing at load: p2 ")
               for n in report["notes"])
    assert {(r["backend"], r["patch_size"]) for r in report["engines"]} == {
        (b, p) for b in ("onnx", "torch") for p in (2, 4, 8)}
    for row in report["engines"]:
        assert ENGINE_KEYS <= row.keys() and row["iters"] == 3
        assert row["mean_ms"] > 0 and row["flops"] > 0 and row["flops_per_s"] > 0
        assert row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"]
    e2e = report["end_to_end"]
    assert set(e2e["modes"]) == {"static", "dynamic", "eager"} and e2e["backend"] == "onnx"
    assert {"dynamic_vs_static", "dynamic_vs_eager", "static_vs_eager"} <= e2e["speedups"].keys()
    assert {"token_ratio", "token_speedup", "flop_ratio", "flop_speedup"} <= e2e["cost"].keys()
    assert {"ms_per_step", "share_of_step", "extra_ms_per_step_vs_static"} <= e2e["scheduler_overhead"].keys()
    assert e2e["modes"]["static"]["steps_per_patch"] == {"2": 5.0}
    schedule = e2e["modes"]["dynamic"]["schedules"]["0"]
    assert len(schedule) == 5 and schedule[:3] == [2, 2, 2]  # warm-up steps run the base
    markdown = (out / "bench.md").read_text()
    assert "| backend | patch | tokens |" in markdown and "## End to end" in markdown


@pytest.fixture(scope="module")
def wan_engines(request, tmp_path_factory):
    """The shared session fixture when conftest has one (one export per test run), else our own."""
    try:
        return request.getfixturevalue("tiny_wan_engines")
    except pytest.FixtureLookupError:
        pass
    from ddit_export.export.build import export_engines
    from ddit_export.export.request import ExportRequest

    out = tmp_path_factory.mktemp("tiny_wan") / "engines"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        export_engines(ExportRequest(family="wan", model="tiny", patch_sizes=(2, 4), frames=5, height=32, width=32,
                                     text_len=8, dtype="fp32", out=str(out), artifacts=("onnx",)))
    finally:
        torch.set_num_threads(before)
    return out


def test_bench_tiny_wan_latency_per_engine_and_end_to_end(wan_engines, tmp_path, torch_single_thread):
    out = tmp_path / "wan"
    sizes = json.loads((wan_engines / "manifest.json").read_text())["patch_sizes"]
    assert bench([str(wan_engines), "--warmup", "1", "--iters", "2", "--steps", "4", "--no-eager", "--tau", "1.0",
                  "--out", str(out)]) == 0
    report = json.loads((out / "bench.json").read_text())
    assert report["family"] == "wan"
    e2e = report["end_to_end"]  # through the runtime's generate, which samples Wan with its own sampler
    assert set(e2e["modes"]) == {"static", "dynamic"} and e2e["speedups"]["dynamic_vs_eager"] is None
    assert len(e2e["modes"]["dynamic"]["schedules"]["0"]) == 4
    assert [(r["backend"], r["patch_size"]) for r in report["engines"]] == [("onnx", p) for p in sizes]
    assert all(ENGINE_KEYS <= r.keys() and r["mean_ms"] > 0 for r in report["engines"])
    assert (out / "latency.png").is_file() and (out / "bench.md").is_file()


def test_peer_baseline_needs_optimum(tiny_flux_engines, tmp_path):
    """Runs for real where the `[optimum]` extra is installed (its own venv: it pins transformers<4.58)."""
    from ddit_export.bench.peer_optimum import peer_latency, unavailable_reason
    from ddit_export.bench.report import peer_markdown

    reason = unavailable_reason()
    if reason:
        assert peer_latency(tiny_flux_engines, isolated=False) == {"skipped": reason}  # else: the venv path
        pytest.skip(f"optimum-onnx not importable (install ddit-export[optimum] in a venv of its own): {reason}")
    result = peer_latency(tiny_flux_engines, warmup=1, iters=3, work_dir=tmp_path)
    assert [r["name"] for r in result["rows"]] == ["optimum-onnx base", "ddit-export base"]
    assert result["ours_vs_peer"] > 0 and result["layout"] == "single"
    assert result["peer_export"] == {"mode": "in-process"}
    # Same weights, same step: optimum's graph and our base engine compute the same prediction.
    assert result["cosine"] > 0.9999 and result["max_abs_err"] < 1e-3
    assert any(i.startswith("img_ids ") for i in result["peer_inputs"])
    assert "max|err|" in "\n".join(peer_markdown(result))


@pytest.mark.parametrize("extra,needle", [
    (["--iters", "0"], "--iters"),
    (["--backends", "nope"], "unknown backend"),
    (["--seeds", "a,b"], "--seeds"),
    (["--device", "cuda"] if not torch.cuda.is_available() else ["--rho", "2"], "cuda" if not torch.cuda.is_available()
     else "--rho"),
])
def test_bench_bad_input_exits_2(tiny_flux_engines, tmp_path, cli, extra, needle):
    cli.refuses("bench", tiny_flux_engines, "--out", tmp_path / "o", *extra, naming=(needle,))
    assert not (tmp_path / "o").exists()


def test_bench_missing_folder_exits_2(tmp_path, capsys):
    assert bench([str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_identical_schedules_give_no_ratio_and_the_console_fits_80_columns(tiny_flux_engines, tmp_path, capsys):
    # tau 0: DDiT never leaves the base size, so dynamic and static run the very same engine calls
    out = tmp_path / "bench"
    assert bench([str(tiny_flux_engines), "--backends", "onnx", "--warmup", "1", "--iters", "2", "--steps", "5",
                  "--tau", "0", "--no-eager", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    e2e = json.loads((out / "bench.json").read_text())["end_to_end"]
    assert e2e["identical_schedules"] is True and e2e["speedups"]["dynamic_vs_static"] is None
    assert "ran the same schedule" in printed and "dynamic/static" not in printed
    assert "same schedule" in (out / "bench.md").read_text()
    assert max(len(line) for line in printed.splitlines()) <= 80
    assert "…" not in printed  # no column cut short
