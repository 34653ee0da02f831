"""Each family's defaults as plain data, importable without torch.

The command line builds its export commands, their help text and checks flags from these before any heavy import
(`ddit-export --help` and argument errors must answer in well under a second); the family
classes in flux.py / wan.py read the same values, so they are stated once.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class FamilyDefaults:
    help: str  # the `ddit-export <family>` command's one-line help
    model: str  # the checkpoint a bare `ddit-export <family>` exports
    size: tuple[int, int]  # height, width in pixels
    text_len: int
    frames: int | None  # video frames; None for image families
    presets: tuple[str, ...]  # random-weight configs, no download (families/<name>.py holds them)
    # Geometry of a preset whose model is too small to deserve the checkpoint's resolution: `tiny`
    # exists for tests and first runs, so it defaults to a size that exports in seconds on a CPU.
    preset_geometry: dict[str, dict] = field(default_factory=dict)

    def geometry(self, model: str | None) -> dict:
        """height, width, frames for `model` (a preset's own, else the checkpoint's)."""
        base = {"height": self.size[0], "width": self.size[1], "frames": self.frames}
        return {**base, **self.preset_geometry.get(model or "", {})}


FAMILY_DEFAULTS = {
    "flux": FamilyDefaults(
        help="export one static engine per patch size for a FLUX transformer",
        model="black-forest-labs/FLUX.1-dev", size=(1024, 1024), text_len=512, frames=None,
        presets=("tiny", "medium", "smoke"), preset_geometry={"tiny": {"height": 128, "width": 128}},
    ),
    "wan": FamilyDefaults(
        help="export one static engine per patch size for a Wan 2.1 video transformer",
        model="Wan-AI/Wan2.1-T2V-1.3B-Diffusers", size=(480, 832), text_len=512, frames=81,
        presets=("tiny", "medium"), preset_geometry={"tiny": {"height": 96, "width": 160, "frames": 5}},
    ),
}
