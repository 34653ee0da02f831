"""Where the files of each engine-folder layout live (single: one file per size; staged: parts + shared weights).

Single layout: one self-contained `.pt2` per size (the manifest entry's file). Staged layout: every
part of every size without weights (`staged/aoti/<part>_p<P>.pt2`) plus ONE weights file that all
of them read; a part knows its tensors by the names below the part's prefix.
"""

from __future__ import annotations

WEIGHTS = "staged/weights.safetensors"
PARTS = ("embed", "trunk", "head")
PART_PREFIX = {"embed": "embeds.{p}.", "trunk": "trunk.", "head": "heads.{p}."}


def package_relpath(part: str, patch: int) -> str:
    return f"staged/aoti/{part}_p{patch}.pt2"
