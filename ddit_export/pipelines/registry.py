"""Which pipeline samples an engine folder: the one list a new family (or a model with its own
pipeline, like the demo) is added to.

Model pipelines are asked first (they match one model id), then the family's.
"""

from __future__ import annotations

from .base import Pipeline, TeacherPipeline
from .demo import DEMO_PIPELINE
from .flux import FLUX_PIPELINE
from .wan import WAN_PIPELINE

FAMILY_PIPELINES: dict[str, Pipeline] = {p.family: p for p in (FLUX_PIPELINE, WAN_PIPELINE)}
MODEL_PIPELINES: tuple[Pipeline, ...] = (DEMO_PIPELINE,)


def pipeline_by_family(family) -> Pipeline:
    """The pipeline of a family (a name or a `families` object)."""
    name = family if isinstance(family, str) else family.name
    if name not in FAMILY_PIPELINES:
        raise ValueError(f"no pipeline samples {name} engines; known: {', '.join(sorted(FAMILY_PIPELINES))}")
    return FAMILY_PIPELINES[name]


def pipeline_for(manifest: dict) -> Pipeline:
    """The pipeline of the engines ``manifest`` describes."""
    for pipeline in MODEL_PIPELINES:
        if pipeline.matches(manifest):
            return pipeline
    return pipeline_by_family(manifest.get("family"))


def teacher_pipeline(family) -> TeacherPipeline:
    """How training samples the family's teacher trajectories (as its inference loop does)."""
    return pipeline_by_family(family).teacher


def image_training_families() -> list[str]:
    """The families whose training can take a folder of images (`train --images`)."""
    return sorted(name for name, p in FAMILY_PIPELINES.items() if p.teacher.trains_on_images)


def make_conditioning(manifest: dict, prompt: str, guidance: float | None = None, device="cpu",
                      negative_prompt: str = "", **images):
    """Conditioning for ``prompt`` on the engines ``manifest`` describes (text encoders run on ``device``).

    ``negative_prompt`` is used by pipelines with classifier-free guidance (Wan) only. ``images``: image
    inputs of the pipelines that take them (FLUX Control/Fill/Kontext: image=, mask=, seed=); None ones are
    not passed on.
    """
    given = {k: v for k, v in images.items() if v is not None}
    return pipeline_for(manifest).conditioning(manifest, prompt, guidance, device, negative_prompt, **given)


def generate(backend, conditioning, config, **options):
    """Sample one batch on ``backend``'s engines with the pipeline of its manifest (see `Pipeline.generate`)."""
    return pipeline_for(backend.manifest).generate(backend, conditioning, config, **options)
