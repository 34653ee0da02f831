"""FLUX split into embed (per size) -> trunk (shared) -> head (per size), as its forward runs.

Each part does exactly what `FluxTransformer2DModel.forward` does for its span, so the chain at a
size computes what that size's single engine computes (the only difference: the trunk adds the
size's LoRA unmerged instead of using merged weights).
"""

from __future__ import annotations

from torch import nn


class FluxEmbed(nn.Module):
    """Pad, patchify, the size's embedding, time/guidance/text embeddings and the size's RoPE tables."""

    def __init__(self, family, transformer, x_embedder, rope, patch: int):
        super().__init__()
        self.family, self.patch = family, patch
        self.x_embedder = x_embedder
        self.time_text_embed = transformer.time_text_embed  # shared by every size
        self.context_embedder = transformer.context_embedder
        self.rope = rope

    def forward(self, latent, encoder_hidden_states, timestep, pooled_projections, guidance=None):
        fam = self.family
        tokens = self.x_embedder(fam.pack(fam.pad(latent, self.patch), self.patch))
        timestep = timestep.to(tokens.dtype) * 1000
        if guidance is None:
            temb = self.time_text_embed(timestep, pooled_projections)
        else:
            temb = self.time_text_embed(timestep, guidance.to(tokens.dtype) * 1000, pooled_projections)
        cos, sin = self.rope()
        return tokens, self.context_embedder(encoder_hidden_states), temb, cos, sin


class FluxTrunk(nn.Module):
    """Every double and single block; returns the image tokens and the residual of the block stack."""

    def __init__(self, transformer, selection):
        super().__init__()
        self.transformer_blocks = transformer.transformer_blocks
        self.single_transformer_blocks = transformer.single_transformer_blocks
        self.selection = selection

    def forward(self, tokens, text_tokens, temb, rope_cos, rope_sin, size_index):
        self.selection.index = size_index
        rope = (rope_cos, rope_sin)
        hidden, text = tokens, text_tokens
        for block in self.transformer_blocks:
            text, hidden = block(hidden_states=hidden, encoder_hidden_states=text, temb=temb, image_rotary_emb=rope)
        for block in self.single_transformer_blocks:
            text, hidden = block(hidden_states=hidden, encoder_hidden_states=text, temb=temb, image_rotary_emb=rope)
        return hidden, hidden - tokens

    # The trunk split after block 0, for first-block caching (same blocks, same order as `forward`).
    def _blocks(self):
        return [*self.transformer_blocks, *self.single_transformer_blocks]

    def first_block(self, tokens, text_tokens, temb, rope_cos, rope_sin, size_index):
        self.selection.index = size_index
        block = self._blocks()[0]
        text, hidden = block(hidden_states=tokens, encoder_hidden_states=text_tokens, temb=temb,
                             image_rotary_emb=(rope_cos, rope_sin))
        return hidden, text

    def other_blocks(self, head_tokens, head_text_tokens, temb, rope_cos, rope_sin, size_index):
        self.selection.index = size_index
        hidden, text = head_tokens, head_text_tokens
        for block in self._blocks()[1:]:
            text, hidden = block(hidden_states=hidden, encoder_hidden_states=text, temb=temb,
                                 image_rotary_emb=(rope_cos, rope_sin))
        return hidden


class FluxHead(nn.Module):
    """Final norm/modulation, the size's de-embedding, unpatchify, the DDiT residual, crop."""

    def __init__(self, family, transformer, proj_out, residual, patch: int, latent_shape):
        super().__init__()
        self.family, self.patch, self.latent_shape = family, patch, tuple(latent_shape)
        self.norm_out = transformer.norm_out  # shared by every size
        self.proj_out = proj_out
        self.residual = residual

    def forward(self, trunk_tokens, temb, latent=None):
        fam, p = self.family, self.patch
        padded_shape = fam.padded_shape(self.latent_shape, p)
        out = fam.unpack(self.proj_out(self.norm_out(trunk_tokens, temb)), p, padded_shape)
        if self.residual is not None:
            out = out + fam.unpack(self.residual(fam.pack(fam.pad(latent, p), p)), p, padded_shape)
        return fam.crop(out, self.latent_shape)


EMBED_OUTPUTS = ("tokens", "text_tokens", "temb", "rope_cos", "rope_sin")
TRUNK_INPUTS = ("tokens", "text_tokens", "temb", "rope_cos", "rope_sin", "size_index")
OTHER_BLOCKS_INPUTS = ("head_tokens", "head_text_tokens", "temb", "rope_cos", "rope_sin", "size_index")


def build_parts(family, plain, selection, sizes_modules: dict, latent_shape):
    """embeds and heads per size, the one trunk; `sizes_modules[p]` = (embedding, de-embedding, residual, rope)."""
    embeds, heads = {}, {}
    for p, (embed, deembed, residual, rope) in sizes_modules.items():
        embeds[p] = FluxEmbed(family, plain, embed, rope, p)
        heads[p] = FluxHead(family, plain, deembed, residual, p, latent_shape)
    return embeds, FluxTrunk(plain, selection), heads


def trunk_token_axes(text_len: int) -> dict[str, dict[int, int]]:
    """Trunk inputs whose axis grows with the image tokens: name -> {axis: extra length beside the tokens}.
    FLUX's RoPE tables cover the text tokens, then the image tokens."""
    return {"tokens": {1: 0}, "rope_cos": {0: text_len}, "rope_sin": {0: text_len}}
