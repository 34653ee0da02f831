"""Prompt conditioning for training: one set of embeddings per prompt, stacked along dim 0.

Three sources:
- precomputed embeddings (`--prompt-embeds`): a safetensors file with the model's embedding
  inputs stacked per prompt (`encoder_hidden_states` [N,T,D], `pooled_projections` [N,D] for FLUX),
  and for Wan's classifier-free guidance `negative_encoder_hidden_states` [1 or N,T,D];
- the pipeline's own text encoders, when `--model` is a diffusers pipeline folder holding them
  (each family's pipeline encodes: `Pipeline.encode_prompts`);
- otherwise SYNTHETIC embeddings: the runtime's rule (`runtime.conditioning`), a generator seeded
  from sha256(prompt), so training and `ddit-export generate` see the same tensors for one prompt.

Timestep and guidance are not part of this: they change per sample / are constants of the run.
"""

from __future__ import annotations

from pathlib import Path

import torch

PER_CALL_INPUTS = ("timestep", "guidance")  # set per sample by the trainer, never per prompt
NEGATIVE = "negative_"  # prefix of the negative prompt's embeddings in a --prompt-embeds file
NEGATIVE_PROMPT = ""  # the runtime's (and WanPipeline's) default negative prompt


def embedding_specs(family, model_config, text_len: int) -> dict[str, tuple[int, ...]]:
    """Shapes (without batch) of the per-prompt embedding inputs the family's transformer takes."""
    specs = family.condition_specs(model_config, 1, text_len)
    return {name: tuple(shape[1:]) for name, shape in specs if name not in PER_CALL_INPUTS}


def describe(specs: dict[str, tuple[int, ...]]) -> str:
    """`encoder_hidden_states [N, T, 4096], pooled_projections [N, 768]`: N prompts, T any text length."""
    def dims(shape):
        return ", ".join(["N", *(["T"] if len(shape) == 2 else []), str(shape[-1])])

    return ", ".join(f"{name} [{dims(shape)}]" for name, shape in specs.items())


def read_prompts(path) -> list[str]:
    """One prompt per line; blank lines are skipped."""
    prompts = [line.strip() for line in Path(path).expanduser().read_text(encoding="utf-8").splitlines()]
    prompts = [p for p in prompts if p]
    if not prompts:
        raise ValueError(f"--prompts {path} holds no prompts (one per line)")
    return prompts


def load_prompt_embeds(path, family, model_config) -> dict[str, torch.Tensor]:
    """Precomputed embeddings, checked against what the model takes (the text length may be any)."""
    from safetensors.torch import load_file

    tensors = load_file(str(Path(path).expanduser()))
    specs = embedding_specs(family, model_config, text_len=1)
    missing = [name for name in specs if name not in tensors]
    if missing:
        raise ValueError(f"--prompt-embeds {path} lacks {missing} (it has {sorted(tensors)}); "
                         f"this model takes {describe(specs)}")
    counts = {tensors[name].shape[0] for name in specs}
    if len(counts) != 1:
        raise ValueError(f"--prompt-embeds {path}: the tensors hold different numbers of prompts {sorted(counts)}")
    for name, shape in specs.items():
        got = tuple(tensors[name].shape[1:])
        if len(got) != len(shape) or got[-1] != shape[-1]:
            raise ValueError(f"--prompt-embeds {path}: {name} has shape {list(tensors[name].shape)}; "
                             f"this model takes {describe(specs)}")
    return {name: tensors[name].float() for name in specs}


def load_negative_embeds(path, family, model_config) -> dict[str, torch.Tensor]:
    """The negative prompt's embeddings from a --prompt-embeds file, keyed like the prompt's."""
    from safetensors.torch import load_file

    tensors = load_file(str(Path(path).expanduser()))
    specs = embedding_specs(family, model_config, text_len=1)
    missing = [NEGATIVE + name for name in specs if NEGATIVE + name not in tensors]
    if missing:
        raise ValueError(f"--guidance above 1 (classifier-free guidance) needs {missing} in --prompt-embeds {path} "
                         "([1 or N, T, D], the negative prompt's embeddings), or --guidance 1")
    out = {name: tensors[NEGATIVE + name].float() for name in specs}
    for name, shape in specs.items():
        if out[name].shape[-1] != shape[-1]:
            raise ValueError(f"--prompt-embeds {path}: {NEGATIVE + name} has shape {list(out[name].shape)}; "
                             f"this model takes {describe(specs)}")
    return out


def synthetic_conditions(prompts: list[str], family, model_config, text_len: int) -> dict[str, torch.Tensor]:
    from ..artifacts.iospec import IOSpec, TensorSpec
    from ..runtime.conditioning import synthetic_conditioning

    specs = embedding_specs(family, model_config, text_len)
    io = IOSpec(inputs=[TensorSpec(name, (1, *shape), "float32") for name, shape in specs.items()], outputs=[])
    per_prompt = [synthetic_conditioning(prompt, io, guidance=None) for prompt in prompts]
    out = {"encoder_hidden_states": torch.cat([c.encoder_hidden_states for c in per_prompt])}
    if "pooled_projections" in specs:
        out["pooled_projections"] = torch.cat([c.pooled_projections for c in per_prompt])
    return out


def prompt_conditions(prompts: list[str], family, model_config, model_id: str, text_len: int,
                      device="cpu") -> tuple[dict[str, torch.Tensor], str]:
    """Embeddings for `prompts` and a line saying where they came from."""
    from ..pipelines.registry import pipeline_by_family
    from ..runtime.conditioning import pipeline_folder_with_text_encoders

    pipeline = pipeline_by_family(family)
    folder = pipeline_folder_with_text_encoders(model_id, pipeline.text_encoder_folders)
    if folder is not None:
        return pipeline.encode_prompts(folder, prompts, text_len, device), f"text encoders of {folder}"
    return (synthetic_conditions(prompts, family, model_config, text_len),
            "synthetic (seeded from sha256 of each prompt; the model has no text encoders here)")
