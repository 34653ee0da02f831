"""Two demo quality runs on the same seeds compared pair by pair (e.g. the same rule with two adapter packs).

    python tools/compare_quality_runs.py A.npz B.npz [--row-a NAME] [--row-b NAME] [--json FILE]

A.npz and B.npz are `tools/demo_quality_eval.py --scores` files of the same seeds. The rows compared
default to each file's first row (its rule); `--row-a` / `--row-b` pick another (a fixed schedule's name as
the table prints it). Prints B minus A in FD to real, class accuracy and PSNR vs base, each with the 95%
interval of the paired difference (the seeds resampled once for both; ddit_export/demo/paired_comparison.py),
and which side is better beyond that interval. Two packs' intervals that overlap can still differ here:
most of what moves a figure between seed sets moves both runs alike.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("a", help="scores of run A (demo_quality_eval.py --scores)")
    p.add_argument("b", help="scores of run B, same seeds")
    p.add_argument("--row-a", help="row of A to compare (default: its first, the rule)")
    p.add_argument("--row-b", help="row of B to compare (default: its first, the rule)")
    p.add_argument("--json", help="also write the differences here")
    return p.parse_args(argv)


def main(argv=None) -> int:
    from ddit_export.commands.errors import run_guarded

    return run_guarded(lambda: compare(parse_args(argv)))


def _load(path: str, flag: str) -> dict:
    from ddit_export.demo.paired_comparison import load_scores

    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"{flag}: no scores file at {file} (write one with "
                                "tools/demo_quality_eval.py --scores FILE.npz)")
    try:
        return load_scores(file)
    except (KeyError, ValueError, OSError) as err:
        raise ValueError(f"{flag}: {file} is not a demo_quality_eval.py --scores file ({err})") from None


def _row(run: dict, name: str | None, flag: str):
    name = name or next(iter(run["rows"]))
    if name not in run["rows"]:
        raise ValueError(f"{flag} {name!r}: no such row; the file has {', '.join(map(repr, run['rows']))}")
    return name, run["rows"][name]


def compare(args) -> int:
    from ddit_export.demo.paired_comparison import paired_difference
    from ddit_export.demo.quality_figures import with_ci
    from ddit_export.util.atomic import write_text_atomic

    a, b = _load(args.a, "A"), _load(args.b, "B")
    if a["seeds"] != b["seeds"] or not np.array_equal(a["labels"], b["labels"]):
        raise ValueError(f"A and B must cover the same seeds and classes to be compared pair by pair (A: seeds "
                         f"{a['seeds'][0]}-{a['seeds'][-1]}, B: {b['seeds'][0]}-{b['seeds'][-1]})")
    if a["real"].shape != b["real"].shape or not np.allclose(a["real"], b["real"], atol=1e-6):
        raise ValueError("A and B were scored against different real reference features (another classifier?): "
                         "their FDs cannot be compared")
    name_a, row_a = _row(a, args.row_a, "--row-a")
    name_b, row_b = _row(b, args.row_b, "--row-b")
    same_base = a["base"].feats.shape == b["base"].feats.shape and np.allclose(a["base"].feats, b["base"].feats,
                                                                              atol=1e-6)
    d = paired_difference(row_a, row_b, a["real"])
    n = d["samples"]
    print(f"B ({args.b}: {name_b}) minus A ({args.a}: {name_a}), {n} samples paired by seed "
          f"({a['seeds'][0]}-{a['seeds'][-1]}), 95% intervals:")
    print(f"  FD to real   {with_ci(d['fd_ddit'], d['fd_ddit_ci'], '+.1f')}  (lower is better): "
          f"{_verdict(d['better']['fd_ddit'])}")
    print(f"  accuracy     {with_ci(d['accuracy_ddit'], d['accuracy_ddit_ci'], '+.1f', 100)} points: "
          f"{_verdict(d['better']['accuracy_ddit'])}")
    print(f"  PSNR vs base {with_ci(d['psnr_db'], d['psnr_db_ci'], '+.2f')} dB: {_verdict(d['better']['psnr_db'])}")
    if not same_base:
        print("  note: the two runs' base images differ (different base models): PSNR is each against its own base")
    if args.json:
        write_text_atomic(Path(args.json).expanduser(), json.dumps(
            {"a": args.a, "row_a": name_a, "b": args.b, "row_b": name_b, "same_base": bool(same_base), **d},
            indent=1) + "\n")
    return 0


def _verdict(side: str) -> str:
    return {"a": "A better", "b": "B better", "neither": "level within the interval"}[side]


if __name__ == "__main__":
    sys.exit(main())
