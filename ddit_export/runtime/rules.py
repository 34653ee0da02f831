"""The dynamic rules' names, torch-free: the command line lists them in `--rule` before importing torch.

Each rule is a preset of `ScheduleConfig` knobs (docs/method.md, "Rules", has the measurements):
  statistic        "std" (the paper's block std of d3), "detail" (block std after removing each
                   channel's block mean), or "x0-detail" (predicted_error.py: structure of the predicted
                   clean latent inside a block, turned into a predicted error by the fitted error model)
  warmup           size of the first 3 steps: "base" or "coarsest"
  monotone         the ratchet: never go back to a coarser size once a finer one ran
  size_scaled_tau  size P passes below tau * 2p / P (tau for 2p, tau / 2 for 4p)
  rho, settle      the rule's own percentile and settle steps (a calibration for the rule overrides them)
"""

from __future__ import annotations

RULES: dict[str, dict] = {
    # arXiv 2602.16968 as written: every step decides on its own, warm-up at the base.
    "paper": {"statistic": "std", "warmup": "base", "monotone": False},
    # Measured best on the demo (docs/method.md): start at the coarsest size, step down one size at a
    # time as the 90th-percentile block std crosses a per-size threshold, hold each new size 3 steps
    # (d3 spans the switch), never go back up.
    "coarse-to-fine": {"statistic": "std", "warmup": "coarsest", "monotone": True, "size_scaled_tau": True,
                       "rho": 0.9, "settle": 3},
    # Measured best on the demo (docs/method.md, "The predicted-error rule"): the coarsest size for two steps,
    # then per step the size minimising predicted error^2 + tau * token share, never coarser again. Needs the
    # engines' error model (`ddit-export calibrate ENGINE_DIR --error-model`).
    "predicted-error": {"statistic": "x0-detail", "warmup": "coarsest", "monotone": True},
}
# The rule that needs a fitted error model in the manifest (scheduler.error_model).
NEEDS_ERROR_MODEL = ("predicted-error",)
DEFAULT_RULE = "paper"
