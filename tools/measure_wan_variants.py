"""What the coarse patch sizes do to Wan image-to-video conditioning (docs/variants-wan.md, Measured).

Tiny random-weight models (tests/wan_variants.py), UNTRAINED DDiT modules (PI-resized embedding,
upsampled de-embedding, LoRA zero), eager torch on the CPU. For each size P it prints:
- dev: ||f_P - f_2|| / ||f_2||, the coarse output's distance from the base output;
- img: ||f_P(image a) - f_P(image b)|| / ||f_P(image a)||, how much the CLIP image embeddings move the output;
- cond: the same for the condition channels (mask + image latent) on the grid;
- frame0: the same when only the condition's first latent frame changes (the I2V image latent lives there),
  and `local`, the share of that movement that stays in the first frame of the output;
- t2v dev: the coarse distance of a text-to-video model of the same widths, for comparison.
Usage: PYTHONPATH=. python tools/measure_wan_variants.py
"""

from __future__ import annotations

import torch

from ddit_export.ddit.merge import build_engine
from ddit_export.ddit.model import DDiTModel
from ddit_export.families.wan import WAN
from tests.wan_variants import I2V_CONFIG, transformer

SHAPE = (1, 16, 3, 16, 24)
SIZES = (2, 4, 8)


def rel(a, b) -> float:
    return ((a - b).norm() / b.norm()).item()


@torch.no_grad()
def main() -> None:
    torch.set_num_threads(1)
    ddit = DDiTModel(WAN, transformer(I2V_CONFIG), list(SIZES)).eval()
    g = torch.Generator().manual_seed(0)
    latent, text = torch.randn(SHAPE, generator=g), torch.randn(1, 8, 32, generator=g)
    cond_a, cond_b = torch.randn(1, 20, *SHAPE[2:], generator=g), torch.randn(1, 20, *SHAPE[2:], generator=g)
    cond_0 = cond_a.clone()
    cond_0[:, :, 0] = torch.randn(cond_0[:, :, 0].shape, generator=g)
    text_only = {k: v for k, v in I2V_CONFIG.items() if k not in ("image_dim", "added_kv_proj_dim")}
    t2v = DDiTModel(WAN, transformer({**text_only, "in_channels": 16}), list(SIZES)).eval()
    t2v_base = None
    img_a, img_b = torch.randn(1, 257, 16, generator=g), torch.randn(1, 257, 16, generator=g)
    t = torch.tensor([500.0])
    base = None
    print(f"latent {SHAPE}, condition 20 channels, 257 image tokens; untrained sizes")
    for patch in SIZES:
        engine = build_engine(ddit, patch, SHAPE, 8)

        def run(condition, image, eng=engine):
            return eng(latent, text, t, condition_latent=condition, encoder_hidden_states_image=image)

        out = run(cond_a, img_a)
        base = out if base is None else base
        moved = run(cond_0, img_a) - out
        local = (moved[:, :, :1].norm() ** 2 / moved.norm() ** 2).item()
        plain = build_engine(t2v, patch, SHAPE, 8)(latent, text, t)
        t2v_base = plain if t2v_base is None else t2v_base
        tokens = WAN.tokens(SHAPE, patch)
        print(f"p{patch}: tokens {tokens:4d}  dev {rel(out, base):.3f}  img {rel(run(cond_a, img_b), out):.3f}  "
              f"cond {rel(run(cond_b, img_a), out):.3f}  frame0 {moved.norm() / out.norm():.3f} local {local:.2f}  "
              f"t2v dev {rel(plain, t2v_base):.3f}")


if __name__ == "__main__":
    main()
