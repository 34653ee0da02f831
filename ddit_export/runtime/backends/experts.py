"""Two experts' engines behind one backend (Wan 2.2 A14B): the runner, its scheduler and its history stay one.

The engine folder holds the first (high-noise) expert's engines and, in a subfolder, the second's
(`export/experts.py`; the manifest's `experts` record). Before each step the caller selects the expert
for the step's timestep with diffusers' rule (WanPipeline: `transformer` while t >= boundary_ratio *
num_train_timesteps, `transformer_2` below); the DDiT scheduler picks the patch size as usual, so one
schedule and one statistic history run across the switch.
"""

from __future__ import annotations

from .base import Backend, BackendError


class ExpertsBackend(Backend):
    """Delegates every call to the selected expert's backend (same sizes, geometry and inputs)."""

    def __init__(self, high: Backend, low: Backend, boundary_timestep: float):
        super().__init__(high.folder, dict(high.manifest), high.device)
        if tuple(high.patch_sizes) != tuple(low.patch_sizes) or high.io_spec != low.io_spec:
            raise BackendError(f"{high.folder}: the two experts' engines differ in sizes or inputs "
                               f"({list(high.patch_sizes)} vs {list(low.patch_sizes)}); re-export the folder")
        self.name = high.name
        self.high, self.low = high, low
        self.boundary_timestep = float(boundary_timestep)
        self.active = high

    def select(self, timestep: float) -> Backend:
        """The expert for a step at ``timestep`` (the pipeline's value, sigma * 1000), as WanPipeline picks it."""
        self.active = self.high if timestep >= self.boundary_timestep else self.low
        return self.active

    @property
    def expert(self) -> str:
        return "transformer" if self.active is self.high else "transformer_2"

    @property
    def patch_sizes(self) -> tuple[int, ...]:
        return tuple(self.high.patch_sizes)

    def __call__(self, patch, latent, **conditioning):
        return self.active(patch, latent, **conditioning)

    def _infer(self, patch, feeds, out_device):
        return self.active._infer(patch, feeds, out_device)

    def close(self) -> None:
        self.high.close()
        self.low.close()
