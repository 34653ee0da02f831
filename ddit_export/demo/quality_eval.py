"""The dynamic rule against every fixed schedule of equal or higher token cost, at the scale of the claim.

For one demo engine folder and one seed set (N samples, seeds seed..seed+N-1, classes in turn):
1. the static base and the dynamic rule, sample by sample interleaved (quality and the rule's speed-up);
2. every fixed schedule (bench/schedules.fixed_families) whose token cost lies in
   [rule's cost, rule's cost + cost_band], plus any named with ``fixed``; each runs the N samples, and
   every ``base_every``-th sample the static base runs again right before it, so each configuration's
   speed-up is timed against base runs interleaved with it (the base's images are drawn once, in 1).
Every configuration gets the demo's figures (demo/evaluate.figures: accuracy, FD, FD ratio, noise
floor, PSNR, speed-up, each with its 95% bootstrap interval). tools/demo_quality_eval.py prints the
table and writes the JSON; docs/quality.md has the measured rows.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from ..bench.end_to_end import schedule_cost
from ..bench.schedules import fixed_families
from ..pipelines.demo.class_table import demo_conditioning
from ..pipelines.demo.classes import CLASS_NAMES
from ..runtime.schedule_spec import format_schedule
from .evaluate import Run, figures, real_features, sample_labels, timed_generate, warm_up
from .paired_comparison import HIGHER_IS_BETTER, paired_difference, save_scores, score

DEFAULT_COST_BAND = 0.05  # "equal cost": fixed schedules up to 0.05 dearer than the rule (1.4 of 28 base steps)
DEFAULT_BASE_EVERY = 16  # static-base timing runs: one per 16 samples of each fixed schedule

Progress = Callable[[str], None]


def fixed_candidates(steps: int, sizes: list[int], base: int, tokens: dict[int, int], low: float,
                     high: float) -> dict[str, tuple[int, ...]]:
    """Fixed schedules (bench/schedules.fixed_families) with token cost in [low, high], cheapest first."""
    families = fixed_families(steps, sizes, base)
    chosen = {label: s for label, s in families.items() if low - 1e-12 <= schedule_cost(list(s), tokens, base) <= high}
    return dict(sorted(chosen.items(), key=lambda kv: (schedule_cost(list(kv[1]), tokens, base), kv[0])))


def _sample(backend, config, label: int, steps: int, seed: int, run: Run) -> None:
    run.add(*timed_generate(backend, demo_conditioning(CLASS_NAMES[label]), config, steps, seed))


def evaluate_rule_and_fixed(backend, classifier, *, samples: int, seed: int, steps: int, rule_config,
                            rule_label: str, fixed: dict[str, tuple[int, ...]] | None = None,
                            cost_band: float | None = DEFAULT_COST_BAND, base_every: int = DEFAULT_BASE_EVERY,
                            progress: Progress | None = None, partial: Callable[[dict], None] | None = None,
                            scores_path: Path | None = None) -> dict:
    """Rows for the rule and the fixed schedules (see the module docstring); ``fixed`` adds named ones.
    Every fixed row has ``vs_rule``: its paired difference from the rule on the same seeds
    (demo/paired_comparison.py), so "beats the rule" can be told from noise.

    ``partial(report)`` gets the report so far (``complete`` False) after each row: a long run keeps what
    it measured if it is stopped. ``scores_path``: every row's per-sample scores go there too (.npz, rewritten
    after each row), for tools/compare_quality_runs.py."""
    from ..runtime.runner import schedule_config

    if samples < len(CLASS_NAMES):
        raise ValueError(f"samples must be at least {len(CLASS_NAMES)} (one per class; got {samples})")
    if base_every < 1:
        raise ValueError(f"base_every must be at least 1 (got {base_every})")
    manifest = backend.manifest
    tokens = {int(e["patch_size"]): int(e["tokens"]) for e in manifest["engines"]}
    sizes, base_patch = sorted(backend.patch_sizes), backend.base_patch
    labels = sample_labels(samples)
    static = schedule_config(backend, static_patch=base_patch)
    warm_up(backend)
    started = time.perf_counter()

    base, rule = Run(), Run()
    for i, label in enumerate(labels.tolist()):  # 1. base and rule interleaved
        _sample(backend, static, label, steps, seed + i, base)
        _sample(backend, rule_config, label, steps, seed + i, rule)
        if progress and (i + 1) % max(1, samples // 10) == 0:
            progress(f"static base + {rule_label}: {i + 1}/{samples} samples, {time.perf_counter() - started:.0f} s")
    real = real_features(classifier)
    # each configuration through the classifier once: its scores serve the figures and the paired comparisons
    base_scores = score(classifier, base.batch, labels, base.batch)
    scores = {rule_label: score(classifier, rule.batch, labels, base.batch)}
    base_scored = (base_scores.right, base_scores.feats)
    rows = {rule_label: {"kind": "dynamic", **figures(base, rule, labels, classifier, real, sizes, tokens,
                                                      base_scored=base_scored,
                                                      ddit_scored=(scores[rule_label].right,
                                                                   scores[rule_label].feats))}}
    rule_cost = rows[rule_label]["token_cost"]

    def save():
        if scores_path is not None:
            save_scores(scores_path, seeds=list(range(seed, seed + samples)), labels=labels.numpy(), base=base_scores,
                        rows=scores, real=real.double().numpy())

    save()

    chosen = {} if cost_band is None else fixed_candidates(steps, sizes, base_patch, tokens, rule_cost,
                                                           rule_cost + cost_band)
    family_of = {s: label for label, s in fixed_families(steps, sizes, base_patch).items()}
    for label, schedule in (fixed or {}).items():
        if tuple(schedule) not in chosen.values():
            chosen[family_of.get(tuple(schedule), label)] = tuple(schedule)  # named as `schedules` names it
    if partial:
        partial(_report(backend, rows, chosen, samples, seed, steps, rule_label, cost_band, base_every, started, False))
    for name, schedule in chosen.items():  # 2. each fixed schedule, base timing runs interleaved
        run, base_timing = Run(), Run()
        config = schedule_config(backend, schedule=schedule)
        for i, label in enumerate(labels.tolist()):
            if i % base_every == 0:
                _sample(backend, static, label, steps, seed + i, base_timing)
            _sample(backend, config, label, steps, seed + i, run)
        scores[name] = score(classifier, run.batch, labels, base.batch)
        rows[name] = {"kind": "fixed", **figures(base, run, labels, classifier, real, sizes, tokens,
                                                 base_seconds=base_timing.seconds, base_scored=base_scored,
                                                 ddit_scored=(scores[name].right, scores[name].feats))}
        rows[name]["vs_rule"] = paired_difference(scores[rule_label], scores[name], real)
        save()
        if progress:
            r = rows[name]
            progress(f"{name}: cost {r['token_cost']:.3f}, FD {r['fd_ddit']:.1f}, PSNR {r['psnr_db']:.2f} dB")
        if partial:
            partial(_report(backend, rows, chosen, samples, seed, steps, rule_label, cost_band, base_every, started,
                            False))
    return _report(backend, rows, chosen, samples, seed, steps, rule_label, cost_band, base_every, started, True)


def _report(backend, rows, chosen, samples, seed, steps, rule_label, cost_band, base_every, started,
            complete: bool) -> dict:
    def compact(row: dict) -> dict:  # one schedule per sample, as text: the JSON stays readable at N = 480
        return {k: v for k, v in row.items() if k != "psnr_db_per_sample"} | {
            "schedules": [s if isinstance(s, str) else format_schedule(s) for s in row["schedules"]]}

    return {"engines": str(Path(backend.folder)), "samples": samples, "seeds": [seed, seed + samples - 1],
            "steps": steps, "rule": rule_label, "cost_band": cost_band, "base_every": base_every,
            "fixed_selected": {k: format_schedule(v) for k, v in chosen.items()},
            "seconds": time.perf_counter() - started, "complete": complete,
            "rows": {name: compact(row) for name, row in rows.items()}}


def beaten_by(rows: dict, rule_label: str, beyond_interval: bool = False) -> dict[str, list[str]]:
    """Per figure, the fixed rows of equal or higher token cost whose point estimate beats the rule's;
    ``beyond_interval``: only those whose paired difference from the rule (``vs_rule``) has its whole
    95% interval on the better side."""
    rule = rows[rule_label]
    dearer = {name: r for name, r in rows.items() if r["kind"] == "fixed" and r["token_cost"] >= rule["token_cost"]}
    if beyond_interval:
        return {key: [name for name, r in dearer.items() if r["vs_rule"]["better"][key] == "b"]
                for key in HIGHER_IS_BETTER}
    return {key: [name for name, r in dearer.items() if (r[key] > rule[key]) == higher and r[key] != rule[key]]
            for key, higher in HIGHER_IS_BETTER.items()}
