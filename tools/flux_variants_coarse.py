"""What coarse patch sizes do to the FLUX variants' conditioning, with UNTRAINED DDiT modules (docs/variants.md).

For each variant (FLUX.1-dev, Depth/Canny, Fill, Kontext) at FLUX.1's real widths and reduced depth (the
"medium" preset, random weights), the prediction at size P is compared with the base-size prediction
(relative L2) on a smooth latent and smooth conditioning (bilinearly upsampled noise: PI-resize is exact on
smooth inputs, so the difference is what the untrained size itself adds). Kontext is measured two ways:
(its "reference influence" = the relative change of the prediction when only the reference changes)
the reference tokens packed at the step's size like the latent (the engines' default) and kept at the base
size (`--kontext-reference base`). Timings: the eager forward at base vs P, interleaved, median of --rounds.

    python tools/flux_variants_coarse.py --pixels 512 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from ddit_export.ddit.model import DDiTModel
from ddit_export.families.flux import FLUX, FLUX_MEDIUM_CONFIG, KONTEXT_PIPELINE, REFERENCE_SIZE_KEY

VARIANTS = {
    "dev": dict(FLUX_MEDIUM_CONFIG),
    "control": dict(FLUX_MEDIUM_CONFIG, in_channels=128, out_channels=64),
    "fill": dict(FLUX_MEDIUM_CONFIG, in_channels=384, out_channels=64),
    "kontext": dict(FLUX_MEDIUM_CONFIG),
}


def smooth(shape, seed: int, factor: int = 8) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    *lead, h, w = shape
    coarse = torch.randn((*lead, h // factor, w // factor), generator=gen)
    return F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)


def rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


def timed(fn, rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def measure(name: str, config: dict, args, sizes: list[int], shape) -> dict:
    """One variant's coarse-size differences, reference influence (Kontext), timings and sequence lengths."""
    torch.manual_seed(0)
    transformer = FLUX.model_class()(**config).eval()
    if name == "kontext":
        FLUX.mark_pipeline(transformer, KONTEXT_PIPELINE)
    model = DDiTModel(FLUX, transformer, [2, *sizes]).eval()
    gen = torch.Generator().manual_seed(1)
    cond = {"encoder_hidden_states": torch.randn(1, args.text_len, 4096, generator=gen),
            "pooled_projections": torch.randn(1, 768, generator=gen), "timestep": torch.tensor([0.6]),
            "guidance": torch.tensor([3.5])}
    grid = {}
    if name in ("control", "fill"):
        grid["condition_latent"] = smooth((1, 16 if name == "control" else 80, *shape[2:]), 2)
    if name == "kontext":
        grid["reference_latent"] = smooth(shape, 2)
    other = {"reference_latent": smooth(shape, 4)}  # Kontext: another reference, same latent
    latent = smooth(shape, 3)

    def ours(p, given=grid):
        return model(latent, p, **cond, **given)

    def alternative(p, given=grid):  # the same model with the reference tokens kept at the base size
        transformer.register_to_config(**{REFERENCE_SIZE_KEY: "base"})
        try:
            return model(latent, p, **cond, **given)
        finally:
            transformer.register_to_config(**{REFERENCE_SIZE_KEY: "step"})

    base = ours(2)
    row = {"tokens": {2: FLUX.tokens(shape, 2)}}
    calls = {"2": lambda: ours(2)}
    if name == "kontext":
        row["reference_influence_p2"] = rel(ours(2, other), base)
    for p in sizes:
        coarse = ours(p)
        row[f"rel_l2_p{p}"] = rel(coarse, base)
        calls[str(p)] = (lambda p=p: ours(p))
        if name == "kontext":
            alt = alternative(p)
            row[f"rel_l2_p{p}_reference_at_base"] = rel(alt, base)
            row[f"rel_l2_p{p}_between_designs"] = rel(coarse, alt)
            row[f"reference_influence_p{p}"] = rel(ours(p, other), coarse)
            row[f"reference_influence_p{p}_reference_at_base"] = rel(alternative(p, other), alt)
            calls[f"{p}_reference_at_base"] = (lambda p=p: alternative(p))
    seconds = {k: [] for k in calls}
    for _ in range(args.rounds):  # interleaved: every form of the call once per round
        for key, fn in calls.items():
            seconds[key] += timed(fn, 1)
    base_s = statistics.median(seconds["2"])
    row["speedup_vs_base"] = {k: round(base_s / statistics.median(v), 3) for k, v in seconds.items()}
    extra = FLUX.tokens(shape, 2) if name == "kontext" else 0
    row["sequence"] = {str(p): FLUX.tokens(shape, p) * (2 if extra else 1) + args.text_len for p in [2, *sizes]}
    if name == "kontext":
        row["sequence"].update({f"{p}_reference_at_base": FLUX.tokens(shape, p) + args.text_len + extra
                                for p in sizes})
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pixels", type=int, default=512)
    parser.add_argument("--text-len", type=int, default=64)
    parser.add_argument("--sizes", default="4,8")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    shape = (1, 16, args.pixels // 8, args.pixels // 8)
    results = {}
    with torch.no_grad():
        for name, config in VARIANTS.items():
            results[name] = measure(name, config, args, sizes, shape)
            print(name, json.dumps(results[name]))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"pixels": args.pixels, "text_len": args.text_len, "results": results}, fh, indent=1)


if __name__ == "__main__":
    main()
