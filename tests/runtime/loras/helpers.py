"""LoRA files as users make them, for tests: peft-made (diffusers' saving) and kohya-keyed, on the tiny FLUX."""

from __future__ import annotations

from pathlib import Path

import torch

ATTENTION = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "proj_mlp", "ff.net.0.proj"]


def stock_transformer():
    """The tiny FLUX model the tiny engines are exported from, as stock diffusers builds it."""
    from ddit_export.families.registry import family_by_name

    return family_by_name("flux").load("tiny")


def peft_lora(path: Path, seed: int, rank: int = 4, alpha: float = 8.0, targets=ATTENTION, model: str = "tiny",
              std: float | None = None) -> Path:
    """A LoRA made with peft on the stock transformer of `model` (random, non-zero factors; `std`: their scale)
    and saved as diffusers saves it."""
    from diffusers import FluxPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from ddit_export.families.registry import family_by_name

    transformer = family_by_name("flux").load(model)
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets), init_lora_weights=False)
    torch.manual_seed(seed)
    transformer.add_adapter(config)
    layers = get_peft_model_state_dict(transformer)
    if std is not None:
        gen = torch.Generator().manual_seed(seed)
        layers = {k: torch.randn(v.shape, generator=gen) * std for k, v in layers.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    FluxPipeline.save_lora_weights(path.parent, transformer_lora_layers=layers, weight_name=path.name,
                                   transformer_lora_adapter_metadata=config.to_dict())
    return path


def kohya_lora(path: Path, seed: int, rank: int = 4, alpha: float = 2.0) -> Path:
    """A kohya-style FLUX LoRA (sd-scripts keys: fused qkv, `lora_down/lora_up`, an `alpha` per module)."""
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed)
    width, mlp = 32, 128  # the tiny preset's inner dim and MLP width
    shapes = {  # module -> (in, out)
        "lora_unet_double_blocks_0_img_attn_qkv": (width, 3 * width),
        "lora_unet_double_blocks_0_img_attn_proj": (width, width),
        "lora_unet_double_blocks_0_txt_mlp_0": (width, mlp),
        "lora_unet_single_blocks_0_linear2": (width + mlp, width),
    }
    state = {}
    for name, (inp, out) in shapes.items():
        state[f"{name}.lora_down.weight"] = torch.randn(rank, inp, generator=gen) * 0.3
        state[f"{name}.lora_up.weight"] = torch.randn(out, rank, generator=gen) * 0.3
        state[f"{name}.alpha"] = torch.tensor(alpha)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path


def diffusers_fused(loras: list[tuple[Path, float]]):
    """The stock transformer after `load_lora_weights(L)` + `fuse_lora(lora_scale=s)` per LoRA, via FluxPipeline."""
    from diffusers import FluxPipeline

    transformer = stock_transformer()
    pipe = FluxPipeline(scheduler=None, vae=None, text_encoder=None, tokenizer=None, text_encoder_2=None,
                        tokenizer_2=None, transformer=transformer)
    for i, (path, scale) in enumerate(loras):
        pipe.load_lora_weights(str(path), adapter_name=f"l{i}")
        pipe.fuse_lora(lora_scale=scale, adapter_names=[f"l{i}"])
        pipe.unload_lora_weights()  # keeps the fused weights, drops the adapter layers
    return transformer
