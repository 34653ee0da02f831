"""Tiny random-weight Wan variant pipelines, built locally (no hub): Wan 2.1 I2V / FLF2V, Wan 2.2 TI2V-5B, A14B.

Each is a stock diffusers pipeline saved with `save_pretrained`, with a tiny UMT5 text encoder and
word-level tokenizer, a tiny Wan VAE and, for I2V, a tiny CLIP vision encoder at 224 px (257 tokens,
as CLIP ViT-H/14 gives Wan I2V).
"""

from __future__ import annotations

import torch

from ddit_export.families.wan import WAN_TINY_CONFIG

I2V_CONFIG = dict(WAN_TINY_CONFIG, in_channels=36, out_channels=16, image_dim=16, added_kv_proj_dim=24)
FLF2V_CONFIG = dict(I2V_CONFIG, pos_embed_seq_len=2 * 257)
TI2V_CONFIG = dict(WAN_TINY_CONFIG, in_channels=48, out_channels=48)
VIDEO = dict(num_frames=5, height=96, width=160)  # latent 2 x 12 x 20 (8x VAE)
TI2V_VIDEO = dict(num_frames=5, height=128, width=192)  # latent 2 x 8 x 12 (16x VAE)


def tokenizer_and_text_encoder():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    vocab = {"<pad>": 0, "<unk>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate(["a", "red", "fox", "blurry"])}}
    words = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, pad_token="<pad>", unk_token="<unk>",
                                        eos_token="</s>", model_max_length=512)
    torch.manual_seed(0)
    encoder = UMT5EncoderModel(UMT5Config(vocab_size=len(vocab), d_model=32, d_kv=8, d_ff=64, num_layers=1,
                                          num_heads=2)).eval()
    return tokenizer, encoder


def transformer(config: dict, seed: int = 0):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    model = WanTransformer3DModel(**config).eval()
    with torch.no_grad():  # diffusers zero-inits some tensors: randomise all, so every input path matters
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def vae(z_dim: int = 16):
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    if z_dim == 48:  # the Wan 2.2 VAE's layout: 48 channels, patchified 2x2 input (16x spatial)
        return AutoencoderKLWan(base_dim=8, decoder_base_dim=8, z_dim=48, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                                is_residual=True, in_channels=12, out_channels=12, patch_size=2,
                                scale_factor_spatial=16, latents_mean=[0.0] * 48, latents_std=[1.0] * 48).eval()
    return AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1).eval()


def image_encoder():
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    config = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                              image_size=224, patch_size=14, projection_dim=16)
    return CLIPVisionModel(config).eval(), CLIPImageProcessor(crop_size=224, size={"shortest_edge": 224})


def scheduler(flow_shift: float = 5.0):
    from diffusers import UniPCMultistepScheduler

    from ddit_export.pipelines.wan import WAN_UNIPC

    return UniPCMultistepScheduler(**{**WAN_UNIPC, "flow_shift": flow_shift})


def i2v_pipeline(config: dict = I2V_CONFIG):
    from diffusers import WanImageToVideoPipeline

    tokenizer, text_encoder = tokenizer_and_text_encoder()
    encoder, processor = image_encoder()
    pipe = WanImageToVideoPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae(), scheduler=scheduler(),
                                   image_processor=processor, image_encoder=encoder, transformer=transformer(config))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def ti2v_pipeline():
    from diffusers import WanPipeline

    tokenizer, text_encoder = tokenizer_and_text_encoder()
    pipe = WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae(48), scheduler=scheduler(),
                       transformer=transformer(TI2V_CONFIG), expand_timesteps=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def a14b_pipeline(boundary_ratio: float = 0.875):
    from diffusers import WanPipeline

    tokenizer, text_encoder = tokenizer_and_text_encoder()
    pipe = WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae(), scheduler=scheduler(4.0),
                       transformer=transformer(WAN_TINY_CONFIG, seed=1),
                       transformer_2=transformer(WAN_TINY_CONFIG, seed=2),
                       boundary_ratio=boundary_ratio)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def first_frame(width: int = 160, height: int = 96, seed: int = 0):
    """A smooth random RGB image (PIL) for image-to-video."""
    import numpy as np
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    small = torch.rand(3, 4, 6, generator=g)[None]
    img = torch.nn.functional.interpolate(small, size=(height, width), mode="bilinear")[0]
    return Image.fromarray((img.permute(1, 2, 0).numpy() * 255).astype(np.uint8))


def relative(a, b) -> float:
    """||a - b|| / ||b|| in float64."""
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def export_pipeline(root, pipe, patch_sizes, **geometry):
    """Save ``pipe`` to ROOT/model and export ONNX fp32 engines from that folder to ROOT/engines (one thread)."""
    from ddit_export.export.build import export_engines
    from ddit_export.export.request import ExportRequest

    pipe.save_pretrained(root / "model")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        export_engines(ExportRequest(family="wan", model=str(root / "model"), patch_sizes=patch_sizes, dtype="fp32",
                                     out=str(root / "engines"), text_len=8, **geometry))
    finally:
        torch.set_num_threads(before)
    return root / "engines"
