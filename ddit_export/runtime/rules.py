"""The dynamic rules' names, torch-free: the command line lists them in `--rule` before importing torch."""

from __future__ import annotations

# Named dynamic rules (`--rule`): the statistic, the warm-up size ("base" or "coarsest") and the ratchet.
RULES: dict[str, dict] = {
    "paper": {"statistic": "std", "warmup": "base", "monotone": False},  # arXiv 2602.16968 as written
}
DEFAULT_RULE = "paper"
