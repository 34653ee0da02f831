"""The demo model's runtime half: its pipeline (pipeline.py), what the model is (model.py: configuration and
shipped files), its classes, codec (pixels <-> latent) and class table (the "text encoder").

The demo's application (training, evaluation, plots: `ddit-export demo`) is `ddit_export/demo/`, a layer above.
"""

from .pipeline import DEMO_PIPELINE, Demo

__all__ = ["DEMO_PIPELINE", "Demo"]
