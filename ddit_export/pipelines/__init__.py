"""The runtime half of each family (flux.py, wan.py, demo.py); `registry.py` picks one per engine folder."""

from .base import GenerationResult, Pipeline
from .registry import generate, make_conditioning, pipeline_by_family, pipeline_for

__all__ = ["GenerationResult", "Pipeline", "generate", "make_conditioning", "pipeline_by_family", "pipeline_for"]
