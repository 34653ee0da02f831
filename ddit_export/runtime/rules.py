"""The dynamic rules' names, torch-free: the command line lists them in `--rule` before importing torch."""

from __future__ import annotations

# Named dynamic rules (`--rule`): the statistic, the warm-up size ("base" or "coarsest") and the ratchet.
RULES: dict[str, dict] = {
    "paper": {"statistic": "std", "warmup": "base", "monotone": False},  # arXiv 2602.16968 as written
    "detail": {"statistic": "detail", "warmup": "base", "monotone": False},
    "ctf-std": {"statistic": "std", "warmup": "coarsest", "monotone": True},
    "ctf-detail": {"statistic": "detail", "warmup": "coarsest", "monotone": True},
    "ctf": {"statistic": "std", "warmup": "coarsest", "monotone": True, "size_scaled_tau": True, "rho": 0.9},
    "ctf-free": {"statistic": "std", "warmup": "coarsest", "monotone": False, "size_scaled_tau": True, "rho": 0.9},
    "ctf-r4": {"statistic": "std", "warmup": "coarsest", "monotone": True, "size_scaled_tau": True},
    "ctf-s3": {"statistic": "std", "warmup": "coarsest", "monotone": True, "size_scaled_tau": True, "rho": 0.9,
               "settle": 3},
}
DEFAULT_RULE = "paper"
