"""Export memory (docs/export-memory.md): the pre-flight check refuses in one line before any heavy work,
every engine records its build's cost, and a weight-dominated export peaks near one copy of the weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from ddit_export.commands.export_cmd import human_bytes
from ddit_export.export.request import ExportRequest
from ddit_export.export.resources import ResourceError, check_resources, disk_estimate, memory_estimate
from ddit_export.util.memory import DISK_ENV, MEMORY_ENV, parse_bytes


def test_too_little_memory_is_refused_in_one_line_before_loading(cli, tmp_path, monkeypatch):
    monkeypatch.setenv(MEMORY_ENV, "1MiB")
    out = tmp_path / "engines"
    err = cli.refuses("flux", "--model", "tiny", "--out", out, naming=("memory", "GiB", "--skip-resource-check"))
    assert "1.0 MiB" not in err and "0.0 GiB is available" in err  # the faked limit, as the check saw it
    assert not out.exists()


def test_too_little_disk_is_refused_with_what_lowers_it(cli, tmp_path, monkeypatch):
    monkeypatch.setenv(DISK_ENV, "1KiB")
    out = tmp_path / "engines"
    cli.refuses("flux", "--model", "tiny", "--patch-sizes", "2,4", "--out", out,
                naming=("disk", "--layout staged", "--skip-resource-check"))
    assert not out.exists()


def test_the_override_flag_and_a_roomy_host_pass_the_check(tmp_path, monkeypatch):
    req = ExportRequest(model="tiny", out=str(tmp_path / "o"), artifacts=("onnx",))
    monkeypatch.setenv(MEMORY_ENV, "1MiB")
    with pytest.raises(ResourceError):
        check_resources(req)
    check_resources(ExportRequest(model="tiny", out=str(tmp_path / "o"), artifacts=("onnx",), skip_resource_check=True))
    monkeypatch.setenv(MEMORY_ENV, "1TiB")
    monkeypatch.setenv(DISK_ENV, "1TiB")
    check_resources(req)


def test_estimates_follow_dtype_layout_and_sizes():
    params = 10**9
    fp32 = ExportRequest(model="tiny", patch_sizes=(2, 4, 8), dtype="fp32", artifacts=("onnx",))
    bf16 = ExportRequest(model="tiny", patch_sizes=(2, 4, 8), dtype="bf16", artifacts=("onnx",))
    assert memory_estimate(bf16, params) > memory_estimate(fp32, params)  # the cast engine beside the fp32 model
    assert disk_estimate(fp32, params, "staged") < disk_estimate(fp32, params)  # weights once, not per size
    assert parse_bytes("1.5GiB") == 3 * 2**29 and parse_bytes("500 MB") == 500 * 10**6
    with pytest.raises(ValueError, match="8GiB"):
        parse_bytes("lots")


def test_every_engine_records_its_build_cost_and_inspect_shows_it(tiny_flux_engines, capsys):
    from ddit_export.cli import main

    manifest = json.loads((tiny_flux_engines / "manifest.json").read_text())
    for e in manifest["engines"]:
        assert e["export_seconds"] > 0
        assert 50 * 2**20 < e["peak_host_bytes"] < 64 * 2**30  # a process with torch loaded, in bytes
        assert ("peak_gpu_bytes" in e) == torch.cuda.is_available()
    capsys.readouterr()
    assert main(["inspect", str(tiny_flux_engines)]) == 0
    table = capsys.readouterr().out
    peak = human_bytes(manifest["engines"][0]["peak_host_bytes"])
    assert "peak" in table and peak in table


# A model dominated by its weights (~125 M parameters, 0.5 GB in fp32) at a tiny resolution: a regression to
# a second resident copy (merged copies, torch model + ONNX Runtime session) adds ~0.5 GB and fails the bound.
# Weights in external data, as every graph past 1.5 GiB has them (a graph with its weights inside is read
# whole by the ONNX checker, a copy a FLUX-scale export never makes).
WEIGHTY = dict(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=128,
               num_attention_heads=12, joint_attention_dim=1024, pooled_projection_dim=256, guidance_embeds=True,
               axes_dims_rope=(16, 56, 56))
# What the peak may reach beyond the process's own footprint before loading (torch, onnx, ORT imported):
# 1.5x the weights of one engine (the target; measured ~1.1x on this model, docs/export-memory.md).
BOUND = 1.5

_CHILD = r"""
import resource, sys
from ddit_export.export.build import export_engines
from ddit_export.commands.export_cmd import human_bytes
from ddit_export.export.request import ExportRequest
import onnxruntime, polygraphy.backend.onnxrt  # everything the export imports, before the baseline is read
print("BASELINE", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, flush=True)
export_engines(ExportRequest(model=sys.argv[1], height=128, width=128, text_len=16, patch_sizes=(2, 4), dtype="fp32",
                             artifacts=("onnx",), device="cpu", out=sys.argv[2], external_data=True))
"""


@pytest.mark.parametrize("layout", ["single", "staged"])
def test_peak_memory_stays_near_one_copy_of_the_weights(tmp_path, layout):
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    FluxTransformer2DModel(**WEIGHTY).save_pretrained(tmp_path / "model")
    weights = sum(p.numel() * 4 for p in FluxTransformer2DModel(**WEIGHTY).parameters())
    child = _CHILD.replace("patch_sizes=(2, 4),", f"patch_sizes=(2, 4), layout={layout!r},")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(tmp_path / "out.txt", "w") as out, open(tmp_path / "err.txt", "w") as err:
        proc = subprocess.Popen([sys.executable, "-c", child, str(tmp_path / "model"), str(tmp_path / "engines")],
                                stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage: its peak RSS, whatever ran before
        proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0, (tmp_path / "err.txt").read_text()[-2000:]
    lines = (tmp_path / "out.txt").read_text().splitlines()
    baseline = int(next(line.split()[1] for line in lines if line.startswith("BASELINE")))
    peak = usage.ru_maxrss * 1024  # kB on Linux
    print(f"{layout}: baseline {baseline / 2**20:.0f} MiB, peak {peak / 2**20:.0f} MiB, weights "
          f"{weights / 2**20:.0f} MiB: {(peak - baseline) / weights:.2f}x above the baseline")
    assert peak - baseline <= BOUND * weights, (
        f"{layout}: peak {peak / 2**20:.0f} MiB, {(peak - baseline) / weights:.2f}x the weights "
        f"({weights / 2**20:.0f} MiB) above the {baseline / 2**20:.0f} MiB baseline")
    manifest = json.loads((tmp_path / "engines" / "manifest.json").read_text())
    assert max(e["peak_host_bytes"] for e in manifest["engines"]) <= peak  # what the manifest records is real

