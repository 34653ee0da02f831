"""Wan 2.1 split into embed (per size) -> trunk (shared) -> head (per size), as its forward runs.

Each part does exactly what `WanTransformer3DModel.forward` does for its span (text-to-video: no
image embeddings, one timestep per sample), with the size's Conv3d embedding, RoPE and
de-embedding; the trunk adds the size's LoRA unmerged.
"""

from __future__ import annotations

from torch import nn


class WanEmbed(nn.Module):
    """Pad, the size's Conv3d patch embedding, the time and text embeddings, the size's RoPE tables."""

    def __init__(self, family, transformer, patch_embedding, rope, patch: int):
        super().__init__()
        self.family, self.patch = family, patch
        self.patch_embedding = patch_embedding
        self.condition_embedder = transformer.condition_embedder  # shared by every size
        self.rope = rope

    def forward(self, latent, encoder_hidden_states, timestep):
        tokens = self.patch_embedding(self.family.pad(latent, self.patch)).flatten(2).transpose(1, 2).contiguous()
        temb, timestep_proj, text, _ = self.condition_embedder(timestep, encoder_hidden_states, None)
        cos, sin = self.rope()
        return tokens, text, temb, timestep_proj.unflatten(1, (6, -1)), cos, sin


class WanTrunk(nn.Module):
    """Every block; returns the video tokens and the residual of the block stack."""

    def __init__(self, transformer, selection):
        super().__init__()
        self.blocks = transformer.blocks
        self.selection = selection

    def forward(self, tokens, text_tokens, timestep_proj, rope_cos, rope_sin, size_index):
        self.selection.index = size_index
        hidden = tokens
        for block in self.blocks:
            hidden = block(hidden, text_tokens, timestep_proj, (rope_cos, rope_sin))
        return hidden, hidden - tokens

    # The trunk split after block 0, for first-block caching (Wan's blocks leave the text tokens as they are).
    def first_block(self, tokens, text_tokens, timestep_proj, rope_cos, rope_sin, size_index):
        self.selection.index = size_index
        return self.blocks[0](tokens, text_tokens, timestep_proj, (rope_cos, rope_sin)), text_tokens

    def other_blocks(self, head_tokens, head_text_tokens, timestep_proj, rope_cos, rope_sin, size_index):
        self.selection.index = size_index
        hidden = head_tokens
        for block in self.blocks[1:]:
            hidden = block(hidden, head_text_tokens, timestep_proj, (rope_cos, rope_sin))
        return hidden


class WanHead(nn.Module):
    """Output norm with the time modulation, the size's de-embedding, unpatchify, DDiT residual, crop."""

    def __init__(self, family, transformer, proj_out, residual, patch: int, latent_shape):
        super().__init__()
        self.family, self.patch, self.latent_shape = family, patch, tuple(latent_shape)
        self.norm_out = transformer.norm_out  # shared by every size
        self.scale_shift_table = transformer.scale_shift_table
        self.proj_out = proj_out
        self.residual = residual

    def forward(self, trunk_tokens, temb, latent=None):
        fam, p = self.family, self.patch
        b, _, f, h, w = fam.padded_shape(self.latent_shape, p)
        shift, scale = (self.scale_shift_table + temb.unsqueeze(1)).chunk(2, dim=1)
        hidden = (self.norm_out(trunk_tokens.float()) * (1 + scale) + shift).type_as(trunk_tokens)
        hidden = self.proj_out(hidden).reshape(b, f, h // p, w // p, 1, p, p, -1)
        out = hidden.permute(0, 7, 1, 4, 2, 5, 3, 6).flatten(6, 7).flatten(4, 5).flatten(2, 3)
        if self.residual is not None:
            padded = fam.pad(latent, p)
            out = out + fam.unpack(self.residual(fam.pack(padded, p)), p, tuple(padded.shape))
        return fam.crop(out, self.latent_shape)


EMBED_OUTPUTS = ("tokens", "text_tokens", "temb", "timestep_proj", "rope_cos", "rope_sin")
TRUNK_INPUTS = ("tokens", "text_tokens", "timestep_proj", "rope_cos", "rope_sin", "size_index")
OTHER_BLOCKS_INPUTS = ("head_tokens", "head_text_tokens", "timestep_proj", "rope_cos", "rope_sin", "size_index")


def build_parts(family, plain, selection, sizes_modules: dict, latent_shape):
    embeds, heads = {}, {}
    for p, (embed, deembed, residual, rope) in sizes_modules.items():
        embeds[p] = WanEmbed(family, plain, embed, rope, p)
        heads[p] = WanHead(family, plain, deembed, residual, p, latent_shape)
    return embeds, WanTrunk(plain, selection), heads


def trunk_token_axes(text_len: int) -> dict[str, dict[int, int]]:
    """Trunk inputs whose axis grows with the video tokens (Wan's RoPE covers the video tokens only)."""
    return {"tokens": {1: 0}, "rope_cos": {1: 0}, "rope_sin": {1: 0}}
