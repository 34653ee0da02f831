"""Tables, JSON and the plot of `ddit-export schedules` (points from `bench.schedules`)."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from ..util.atomic import write_text_atomic
from .calibrate import json_safe
from .plots import plot_schedule_front
from .report import write_json


def _columns(points) -> list[str]:
    extra = [k for k in ("accuracy", "fd") if k in points[0].scores]
    return ["schedule", "cost", "flops", "PSNR", "SSIM", *extra, "place"]


def _cells(p, extra: list[str]) -> list[str]:
    place = {True: "ABOVE front", False: "below front", None: "front" if p.front else ""}[p.above_front]
    if p.kind == "dynamic":
        place += f" (= {p.same_as})" if p.same_as else f" ({p.distinct_schedules} schedules)"
    scores = [f"{100 * p.scores['accuracy']:.1f}%" if k == "accuracy" else f"{p.scores[k]:.1f}" for k in extra]
    return [p.label, f"{p.token_cost:.3f}", f"{p.flop_cost:.3f}", f"{p.psnr:.2f}", f"{p.ssim:.3f}", *scores, place]


def shown(points) -> list:
    """The base, the fixed front and every dynamic point, by cost (the other fixed points go to JSON)."""
    return sorted((p for p in points if p.kind != "fixed" or p.front), key=lambda p: p.token_cost)


def markdown(points, title: str) -> str:
    cols = _columns(points)
    extra = cols[5:-1]
    lines = [f"# {title}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_cells(p, extra)) + " |" for p in shown(points)]
    dynamic = [p for p in points if p.kind == "dynamic" and p.cost_per_prompt]
    if dynamic:
        prompts = list(dynamic[0].cost_per_prompt)
        lines += ["", "Mean token cost per prompt:", "", "| prompt | " + " | ".join(p.label for p in dynamic) + " |",
                  "|---|" + "---|" * len(dynamic)]
        lines += [f"| {q} | " + " | ".join(f"{p.cost_per_prompt[q]:.3f}" for p in dynamic) + " |" for q in prompts]
    return "\n".join(lines) + "\n"


def print_table(points, console: Console, title: str) -> None:
    cols = _columns(points)
    table = Table(title=title, title_justify="left")
    for i, c in enumerate(cols):
        table.add_column(c, justify="left" if i in (0, len(cols) - 1) else "right", overflow="fold")
    for p in shown(points):
        table.add_row(*_cells(p, cols[5:-1]), style="bold" if p.kind == "dynamic" else None)
    console.print(table)


def write_reports(points, out: Path, title: str, console: Console | None = None, metric: str = "psnr") -> list[Path]:
    if console is not None:
        print_table(points, console, title)
    rows = [json_safe(p.row()) for p in points]
    return [write_json(out / "schedules.json", {"title": title, "front_metric": metric, "points": rows}),
            write_text_atomic(out / "schedules.md", markdown(points, title)),
            plot_schedule_front(points, out / "schedules.png", metric)]
