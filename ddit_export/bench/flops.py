"""Analytic FLOPs of one engine call of an engine folder: each family's formula is its pipeline's
(`Pipeline.flops` in pipelines/flux.py, pipelines/wan.py; the convention: pipelines/flop_count.py)."""

from __future__ import annotations

from ..pipelines.registry import pipeline_for


def engine_flops(manifest: dict, patch: int) -> dict:
    """FLOPs of one call of the size-``patch`` engine an engine folder describes."""
    pipeline = pipeline_for(manifest)
    entry = next((e for e in manifest["engines"] if int(e["patch_size"]) == patch), None)
    if entry is None:
        raise ValueError(f"the manifest has no engine of patch size {patch}")
    return pipeline.flops(
        manifest["model"]["config"], int(entry["tokens"]), int(manifest["request"]["text_len"]), patch,
        residual=patch != int(manifest["base_patch"]), batch=int(manifest["latent_shape"][0]),
    )


def flops_table(manifest: dict) -> dict[int, int]:
    """patch size -> total FLOPs per call."""
    return {int(p): engine_flops(manifest, int(p))["total"] for p in manifest["patch_sizes"]}
