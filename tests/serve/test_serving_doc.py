"""docs/serving.md's Python example runs as written (engine paths pointed at the test's demo engines)."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from tests.serve.helpers import demo_engine_folders

DOC = Path(__file__).resolve().parents[2] / "docs" / "serving.md"


def test_batched_runner_example_runs():
    (block,) = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    solo_dir, batch_dir = demo_engine_folders()
    code = block.replace('"engines/demo.batch8"', repr(str(batch_dir))).replace('"engines/demo"', repr(str(solo_dir)))
    assert str(solo_dir) in code and str(batch_dir) in code
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        scope: dict = {}
        exec(compile(code, str(DOC), "exec"), scope)
    finally:
        torch.set_num_threads(before)
    results = scope["results"]
    assert len(results) == 8 and all(len(r.trace.schedule) == 28 for r in results)
    assert any(n > 1 for r in results for n in r.batch_sizes)  # calls were shared
