"""The demo model's runtime half: a FLUX pipeline whose "text encoder" is a class table and whose
latent is the pixels (ddit_export/demo/: the model, its classes, codec and class table).

It is the pipeline of engines whose model id is the demo's; everything else about sampling is FLUX's.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..flux import Flux
from .class_table import demo_conditioning
from .classes import CLASS_NAMES, class_index
from .model import DEMO_MODEL_ID


class Demo(Flux):
    default_prompt = CLASS_NAMES[0]

    def matches(self, manifest: dict) -> bool:
        return manifest.get("model", {}).get("id") == DEMO_MODEL_ID

    def check_prompt(self, prompt: str) -> str:
        """The demo knows only its class names: other text would sample noise from made-up embeddings."""
        return CLASS_NAMES[class_index(prompt)]  # raises with the list of classes

    def conditioning(self, manifest, prompt, guidance=None, device="cpu", negative_prompt=""):
        if prompt in CLASS_NAMES:  # a class name -> the demo's class table; other text stays synthetic
            batch = int(manifest["latent_shape"][0])
            return demo_conditioning(prompt, batch=batch)
        return super().conditioning(manifest, prompt, guidance, device)

    def image_decoder(self, manifest, device):
        from .codec import decode

        return lambda latent: decode(latent.float().cpu())  # the demo's latent is the pixels: its exact codec

    def write_outputs(self, manifest: dict, latent: torch.Tensor, out: Path, device) -> list[Path]:
        from .codec import to_pil

        path = out / "image.png"
        to_pil(self.image_decoder(manifest, device)(latent)[0]).save(path)
        return [path]


DEMO_PIPELINE = Demo()
