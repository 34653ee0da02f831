"""Training samples and the deterministic order they are drawn in.

A `SampleSet` holds every sample in memory: latents plus the index of their prompt's embeddings
(embeddings are stored once per prompt, not once per sample). Trajectory samples carry the
timestep the teacher saw; image samples are clean latents that `model_inputs` noises per draw.

Everything random is a function of (seed, stream position), not of an RNG that runs along: the
k-th sample of the run is the same whether the run was interrupted or not, on any number of
processes. That is what makes `--resume` reproduce an uninterrupted run exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from ..pipelines.flux import flow_sigma

GOLDEN = 0x9E3779B97F4A7C15  # spreads (seed, index) pairs over the seed space


def mixed_seed(seed: int, index: int) -> int:
    return (seed * GOLDEN + index) % (2**63)


@dataclass
class SampleSet:
    latents: torch.Tensor  # N x C [x F] x h x w: z_t (trajectories) or clean latents (images)
    prompt_index: torch.Tensor  # N, long: row of `conditions` for each sample
    conditions: dict[str, torch.Tensor]  # per prompt: encoder_hidden_states [P,T,D], pooled_projections [P,D]
    timesteps: torch.Tensor | None = None  # N, as the pipeline passes them; None: clean latents
    source: str = ""
    negative: dict[str, torch.Tensor] | None = None  # CFG trajectories: the negative embeddings they used

    def __len__(self) -> int:
        return self.latents.shape[0]

    @property
    def clean(self) -> bool:
        return self.timesteps is None

    def item(self, index: int) -> dict[str, torch.Tensor]:
        prompt = int(self.prompt_index[index])
        item = {name: value[prompt] for name, value in self.conditions.items()}
        item["latent"] = self.latents[index]
        if self.timesteps is not None:
            item["timestep"] = self.timesteps[index]
        return item


class SampleStream(Dataset):
    """Position k of the run -> a sample; each epoch is a fresh seeded permutation of the set.

    The loader asks for positions `start .. end` in order (`positions`), so resuming at a saved
    position continues the exact stream.
    """

    def __init__(self, samples: SampleSet, seed: int, length: int):
        self.samples, self.seed, self.length = samples, seed, length
        self._orders: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return self.length

    def replace(self, samples: SampleSet) -> None:
        """Draw from `samples` from now on (student states refreshed, `rollouts.py`)."""
        self.samples, self._orders = samples, {}

    def order(self, epoch: int) -> torch.Tensor:
        if epoch not in self._orders:  # only the current epoch is kept
            gen = torch.Generator().manual_seed(mixed_seed(self.seed, epoch))
            self._orders = {epoch: torch.randperm(len(self.samples), generator=gen)}
        return self._orders[epoch]

    def __getitem__(self, position: int) -> dict[str, torch.Tensor]:
        epoch, offset = divmod(position, len(self.samples))
        item = self.samples.item(int(self.order(epoch)[offset]))
        item["position"] = torch.tensor(position)
        return item


def model_inputs(batch: dict, seed: int, mu: float, timestep_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(z_t, timestep as the pipeline passes it) for a batch.

    Trajectory samples already are z_t. Clean latents are noised the flow-matching way,
    `z_t = (1 - sigma) x0 + sigma * noise`, with sigma drawn from the sampler's shifted distribution
    so training covers the noise levels inference visits; noise and sigma come from the sample's
    stream position.
    """
    latent = batch["latent"]
    if "timestep" in batch:
        return latent, batch["timestep"]
    noises, sigmas = [], []
    for position in batch["position"].tolist():
        gen = torch.Generator().manual_seed(mixed_seed(seed, position))
        noises.append(torch.randn(tuple(latent.shape[1:]), generator=gen))
        u = torch.rand((), generator=gen).clamp(1e-3, 1.0)  # u -> 0 would be a noise-free sample
        sigmas.append(flow_sigma(u, mu))
    noise = torch.stack(noises).to(latent.device, latent.dtype)
    sigma = torch.stack(sigmas).to(latent.device, torch.float32)
    s = sigma.view(-1, *([1] * (latent.dim() - 1))).to(latent.dtype)
    return (1 - s) * latent + s * noise, (sigma * timestep_scale).to(latent.dtype)
