"""The README's "First five minutes" runs as written: every bash and python block of that section, in order.

`ddit-export` is put on PATH as a shim that runs this checkout (the installed console script may
belong to another copy), in an empty folder, as a new user would.
"""

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import ddit_export

REPO = Path(ddit_export.__file__).resolve().parent.parent
SECTION = "## First five minutes"


def section_blocks() -> list[tuple[str, str]]:
    text = (REPO / "README.md").read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    return re.findall(r"```(bash|python)\n(.*?)```", text[start:end], flags=re.S)


def test_the_section_has_the_whole_path():
    code = "\n".join(body for _, body in section_blocks())
    for step in ("ddit-export flux --model tiny", "ddit-export inspect", "ddit-export generate", "ddit-export bench",
                 "FluxPipeline(", "import torch"):
        assert step in code, step


def test_first_five_minutes_runs_as_written(tmp_path):
    shim = tmp_path / "bin" / "ddit-export"
    shim.parent.mkdir()
    shim.write_text(f"#!/bin/sh\nexec {sys.executable} -m ddit_export.cli \"$@\"\n")
    shim.chmod(shim.stat().st_mode | stat.S_IXUSR)
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PATH": f"{shim.parent}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(REPO)}
    for language, body in section_blocks():
        command = ["bash", "-euo", "pipefail", "-c", body] if language == "bash" else [sys.executable, "-c", body]
        result = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"{language} block failed:\n{body}\n{result.stdout[-2000:]}\n" \
                                       f"{result.stderr[-3000:]}"
        if language == "bash" and "generate" in body:
            assert re.search(r"schedule \(20 steps\): 2 2 2 4", result.stdout), result.stdout
    assert (work / "outputs" / "dropin.png").is_file()
    assert (work / "outputs" / "tiny" / "trace.json").is_file()
    assert (work / "outputs" / "bench-tiny" / "bench.json").is_file()
