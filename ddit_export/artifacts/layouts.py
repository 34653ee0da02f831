"""Where every file of a staged engine folder lives: the one home of these paths.

Single layout: one self-contained file per size and artifact kind (the manifest entry's file).
Staged layout, everything below `staged/`:
- ONNX: `embed_p<P>.onnx` and `head_p<P>.onnx` per size, ONE `trunk.onnx` for every size (and, with
  `--first-block-split`, `first_block.onnx` + `other_blocks.onnx`);
- AOTInductor: every part of every size without weights (`aoti/<part>_p<P>.pt2`) plus ONE weights file
  that all of them read; a part knows its tensors by the names below the part's prefix;
- TensorRT: `embed/head_p<P>_trt<ver>.plan` per size and ONE trunk plan with a profile per size.

Resolution buckets (`--resolutions`): the default bucket's files are where a one-bucket folder has them;
every other bucket's per-size files have the same paths below `buckets/<H>x<W>/` (`in_bucket`). The
staged trunk (graph, weights file, trunk plan) stays at the top: one copy for every bucket.
"""

from __future__ import annotations

STAGED_DIR = "staged"
PARTS = ("embed", "trunk", "head")
WEIGHTS = f"{STAGED_DIR}/weights.safetensors"
PART_PREFIX = {"embed": "embeds.{p}.", "trunk": "trunk.", "head": "heads.{p}."}
TRUNK_PLAN = STAGED_DIR + "/trunk_trt{version}.plan"


def onnx_name(part: str, patch: int | None = None) -> str:
    """A staged ONNX graph's file name: per-size parts carry `_p<P>`; shared ones (trunk, split halves) do not."""
    return f"{part}.onnx" if patch is None else f"{part}_p{patch}.onnx"


def onnx_relpath(part: str, patch: int | None = None) -> str:
    return f"{STAGED_DIR}/{onnx_name(part, patch)}"


def package_relpath(part: str, patch: int) -> str:
    return f"{STAGED_DIR}/aoti/{part}_p{patch}.pt2"


def part_plan_relpath(part: str, patch: int, trt_version: str) -> str:
    return f"{STAGED_DIR}/{part}_p{patch}_trt{trt_version}.plan"


TRUNK_ONNX = onnx_relpath("trunk")
BUCKETS_DIR = "buckets"


def in_bucket(relpath: str, bucket: str | None) -> str:
    """A per-bucket file's path: as is for the default bucket (None), else below `buckets/<H>x<W>/`."""
    return relpath if bucket is None else f"{BUCKETS_DIR}/{bucket}/{relpath}"


def part_prefix(part: str, patch: int, bucket: str | None = None) -> str:
    """The names a part's tensors have in the shared AOTInductor weights file: the trunk's are every bucket's;
    an extra bucket's embeds/heads are below `buckets.<H>x<W>.` (most of them aliases of the default's)."""
    prefix = PART_PREFIX[part].format(p=patch)
    return prefix if bucket is None or part == "trunk" else f"{BUCKETS_DIR}.{bucket}.{prefix}"
