"""The manifest's precision names and the torch dtypes they stand for (export and runtime share them)."""

from __future__ import annotations

import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
