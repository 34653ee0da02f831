"""A small CNN that names the class of a demo image; its penultimate features feed the Frechet distance.

Trained by `tools/train_demo.py` on fresh procedural images (with mild noise and blur, so slightly
imperfect samples are still read by colour and shape) and shipped as `classifier.safetensors`.
"""

from __future__ import annotations

import torch
from torch import nn

from ..pipelines.demo.classes import CLASS_NAMES
from ..pipelines.demo.model import CLASSIFIER, require

FEATURES = 64


class DemoClassifier(nn.Module):
    def __init__(self, classes: int = len(CLASS_NAMES)):
        super().__init__()

        def block(cin, cout):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.GELU(), nn.MaxPool2d(2))

        self.body = nn.Sequential(block(3, 16), block(16, 32), block(32, FEATURES), nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten())
        self.head = nn.Linear(FEATURES, classes)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate features (B x 64) of images in [0, 1]."""
        return self.body(images * 2 - 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


def load_classifier() -> DemoClassifier:
    from safetensors.torch import load_file

    model = DemoClassifier()
    model.load_state_dict(load_file(str(require(CLASSIFIER))))
    return model.eval()


@torch.no_grad()
def score(classifier: DemoClassifier, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, torch.Tensor]:
    """(class accuracy in [0, 1], penultimate features) of a batch of images."""
    feats = classifier.features(images)
    accuracy = (classifier.head(feats).argmax(1) == labels).float().mean().item()
    return accuracy, feats
