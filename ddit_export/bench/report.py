"""Markdown tables and JSON for benchmark and calibration results (pure formatting, no timing)."""

from __future__ import annotations

import json
from pathlib import Path

from ..util.atomic import write_text_atomic
from .memory import memory_markdown


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def _num(value, fmt: str = ".2f") -> str:
    return "n/a" if value is None else format(value, fmt)


def engines_markdown(rows: list[dict]) -> list[str]:
    header = ["backend", "patch", "tokens", "GFLOP/call", "mean ms", "p50 ms", "p95 ms", "p99 ms", "GFLOP/s",
              "t(base)/t"]
    body = [[r["backend"], r["patch_size"], r["tokens"], _num(r["flops"] / 1e9, ".4g"), _num(r["mean_ms"]),
             _num(r["p50_ms"]), _num(r["p95_ms"]), _num(r["p99_ms"]), _num(r["flops_per_s"] / 1e9, ".4g"),
             _num(r["speedup_vs_base"])] for r in rows]
    return _table(header, body)


def e2e_markdown(e2e: dict) -> list[str]:
    if "skipped" in e2e:
        return [f"End to end skipped: {e2e['skipped']}"]
    kind = e2e.get("cache", {}).get("kind", "cache")
    names = {"static": f"static base ({e2e['backend']})", "dynamic": f"DDiT dynamic ({e2e['backend']})",
             "eager": f"PyTorch eager base ({e2e['eager_backend']})", "cache": f"{kind} alone ({e2e['backend']})",
             "dynamic_cache": f"DDiT + {kind} ({e2e['backend']})"}
    body = [[names[m], _num(s["seconds_per_image"], ".4f"), _num(s["p50_ms"] / 1e3, ".4f"),
             _num(s["scheduler_ms_per_step"], ".3f"), _num(s["engine_ms_per_step"], ".3f"),
             " ".join(f"p{p}:{n:g}" for p, n in s["steps_per_patch"].items())]
            for m, s in e2e["modes"].items()]
    lines = [f"{e2e['steps']} steps, seeds {e2e['seeds']} x {e2e['repeats']} repeats, tau {e2e['tau']:g}, "
             f"rho {e2e['rho']:g}; conditioning: {e2e['conditioning']}", ""]
    lines += _table(["mode", "s/image (mean)", "s/image (p50)", "scheduler ms/step", "engine ms/step",
                     "steps per size"], body)
    sp, cost, over = e2e["speedups"], e2e["cost"], e2e["scheduler_overhead"]
    if e2e.get("identical_schedules"):
        lines += ["", "Dynamic and static ran the same schedule on every image (DDiT kept the base size): "
                  "there is no dynamic-vs-static speed-up to report; raise --tau to let DDiT pick coarser sizes."]
    lines += ["", f"Speed-ups (wall, one run): dynamic vs static {_num(sp['dynamic_vs_static'])}x, "
              f"dynamic vs eager {_num(sp['dynamic_vs_eager'])}x, static vs eager {_num(sp['static_vs_eager'])}x.",
              f"Schedule cost (noise-free): token speed-up {_num(cost['token_speedup'])}x, "
              f"FLOP speed-up {_num(cost['flop_speedup'])}x.",
              f"Scheduler overhead: {_num(over['ms_per_step'], '.3f')} ms/step "
              f"({_num(100 * over['share_of_step'], '.1f')}% of a step)."]
    if e2e.get("cache_table"):
        lines += ["", *cache_markdown(e2e, names)]
    return lines


CACHE_MODES = ("static", "cache", "dynamic", "dynamic_cache")


def cache_markdown(e2e: dict, names: dict) -> list[str]:
    """The paper's four-way table: static base, cache alone, DDiT alone, DDiT + cache."""
    c, table = e2e["cache"], e2e["cache_table"]
    body = [[names[m], _num(table[m]["seconds_per_image"], ".4f"), _num(table[m]["speedup_vs_static"]) + "x",
             f"{100 * table[m]['cached_steps']:.0f}%", _num(table[m]["token_cost"], ".3f"),
             _num(table[m]["psnr_db"]), _num(table[m]["ssim"], ".3f")] for m in CACHE_MODES]
    return [f"Step cache {c['kind']}:{c['threshold']:g} ({c['coefficients_source'] or 'no polynomial'}); quality "
            "is the final latent's against the static base's (latent space, mapped to [0, 1] by the base's range).",
            "", *_table(["configuration", "s/image", "speed-up vs base", "steps cached", "token cost",
                         "PSNR dB", "SSIM"], body),
            "", f"DDiT + {c['kind']} vs DDiT alone: {_num(e2e['speedups']['dynamic_cache_vs_dynamic'])}x."]


def bench_markdown(report: dict) -> str:
    lines = [f"# ddit-export bench: {report['engine_dir']}", "",
             f"{report['family']}, latent {report['latent_shape']}, text {report['text_len']} tokens, "
             f"{report['dtype']}, device {report['device']} ({report['clock']}); "
             f"{report['warmup']} warm-up + {report['iters']} timed round-robin rounds.", "",
             "## Per engine", ""]
    lines += engines_markdown(report["engines"])
    lines += memory_markdown(report.get("memory", []))
    for name, reason in report.get("skipped_backends", {}).items():
        lines.append(f"\nBackend {name} skipped: {reason}")
    for note in report.get("notes", []):
        lines.append(f"\nNote: {note}")
    if report.get("end_to_end") is not None:
        lines += ["", "## End to end", ""] + e2e_markdown(report["end_to_end"])
    if report.get("peer") is not None:
        lines += ["", "## Peer baseline (optimum-onnx)", ""] + peer_markdown(report["peer"])
    return "\n".join(lines) + "\n"


def peer_markdown(peer: dict) -> list[str]:
    if "skipped" in peer:
        return [f"Skipped: {peer['skipped']}"]
    body = [[r["name"], _num(r["mean_ms"]), _num(r["p50_ms"]), _num(r["p95_ms"])] for r in peer["rows"]]
    lines = _table(["engine", "mean ms", "p50 ms", "p95 ms"], body) + [
        "", f"optimum mean / ours mean: {_num(peer['ours_vs_peer'])} (above 1: ours is faster)"]
    if "max_abs_err" in peer:
        lines += ["", f"outputs on the same weights and inputs ({peer.get('layout', 'single')} layout): "
                  f"max|err| {peer['max_abs_err']:.3g}, cosine {peer['cosine']:.6f}",
                  "", "optimum's graph inputs: " + "; ".join(peer.get("peer_inputs", []))]
    return lines


def write_json(path, data: dict) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2) + "\n")
