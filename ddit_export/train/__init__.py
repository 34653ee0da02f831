"""DDiT adapter distillation: train each extra patch size's modules and LoRA against the base model.

    config = TrainConfig(out="adapters/", model="tiny", patch_sizes=(2, 4, 8), prompts="prompts.txt")
    result = train(config)          # writes adapters.json + adapters.safetensors + train_log.json

The output folder is an adapter pack (`ddit-export {flux,wan} --adapters OUT`). The objective is in
`objective.py`, the data sources in `images.py` and `trajectories.py`.
"""

from .config import TrainConfig
from .data import SampleSet
from .distill import TrainResult, train
from .objective import DistillationObjective, freeze_for_distillation
from .trajectories import collect_trajectories

__all__ = [
    "DistillationObjective",
    "SampleSet",
    "TrainConfig",
    "TrainResult",
    "collect_trajectories",
    "freeze_for_distillation",
    "train",
]
