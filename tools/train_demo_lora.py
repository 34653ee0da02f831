"""Train a small style LoRA on the demo's BASE model with peft, saved as diffusers saves LoRAs.

    python tools/train_demo_lora.py                                    # the shipped one (250 steps of 16 images)
    python tools/train_demo_lora.py --model PATH --out my.safetensors  # any demo-like FLUX transformer

The style: the demo's procedural images with their red and blue channels swapped (a red circle comes
out blue). Rectified-flow training exactly as the base model was trained (`demo/training.flow_batch`,
FLUX's sigma shift, `FLUX.predict` at the base patch size), with only the LoRA factors trainable
(peft `LoraConfig` on the blocks' attention and feed-forward linears, `init_lora_weights` default:
B = 0, so step 0 is the base model). The file is written by `FluxPipeline.save_lora_weights` with its
`LoraConfig` as metadata, so `pipe.load_lora_weights(file)` and `ddit-export generate --lora file`
read it the same way (docs/loras.md). The LoRA never sees DDiT's coarse sizes: how well it carries to
them is what docs/loras.md measures.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

# Every linear of the transformer blocks (the staged trunk), none outside: a full regex, as peft takes a string.
TARGETS = (r".*transformer_blocks\.\d+\.(attn\.(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|add_v_proj|to_add_out)"
           r"|ff\.net\.0\.proj|ff\.net\.2|ff_context\.net\.0\.proj|ff_context\.net\.2|proj_mlp|proj_out)")


def swap_red_blue(images: torch.Tensor) -> torch.Tensor:
    return images[:, [2, 1, 0]]


def main() -> int:
    from ddit_export.pipelines.demo.model import DEMO_MODEL_ID

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=DEMO_MODEL_ID, help="base transformer (default: the shipped demo model)")
    p.add_argument("--out", default="ddit_export/assets/demo/loras/red_blue_swap.safetensors")
    p.add_argument("--steps", type=int, default=250)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--alpha", type=float, default=8.0)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from diffusers import FluxPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from ddit_export.demo.data import sample_batch
    from ddit_export.demo.training import sampler_mu
    from ddit_export.families.flux import FLUX
    from ddit_export.pipelines.demo.class_table import class_conditions, load_class_table
    from ddit_export.pipelines.demo.codec import encode
    from ddit_export.pipelines.flux import flow_sigma
    from ddit_export.util.atomic import atomic_file

    model = FLUX.load(args.model)
    model.requires_grad_(False)
    config = LoraConfig(r=args.rank, lora_alpha=args.alpha, target_modules=TARGETS)
    model.add_adapter(config)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr)
    _, table = load_class_table()
    channels = model.config.in_channels // 4  # packed 2 x 2: the latent's channels
    gen, mu = torch.Generator().manual_seed(args.seed), sampler_mu()

    def styled_flow_batch():
        """`demo/training.flow_batch` on the styled images: (z_s, conditioning with timestep, target)."""
        images, labels = sample_batch(args.batch, gen)
        x0 = encode(swap_red_blue(images), channels)
        noise = torch.randn(x0.shape, generator=gen)
        sigma = flow_sigma(torch.rand(args.batch, generator=gen).clamp(1e-3, 1.0), mu)
        s = sigma.view(-1, 1, 1, 1)
        return (1 - s) * x0 + s * noise, {**class_conditions(labels, table), "timestep": sigma}, noise - x0

    start, losses = time.perf_counter(), []
    model.train()
    for step in range(1, args.steps + 1):
        z, cond, target = styled_flow_batch()
        loss = F.mse_loss(FLUX.predict(model, z, FLUX.base_patch, cond), target)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % 50 == 0 or step == args.steps:
            print(f"step {step}/{args.steps}: loss {sum(losses[-50:]) / len(losses[-50:]):.4f} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    layers = {k: v.detach().contiguous() for k, v in get_peft_model_state_dict(model).items()}
    with atomic_file(out) as tmp:
        FluxPipeline.save_lora_weights(tmp.parent, transformer_lora_layers=layers, weight_name=tmp.name,
                                       transformer_lora_adapter_metadata=config.to_dict())
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB, {len(layers) // 2} modules, rank {args.rank}, "
          f"{time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
