"""Run a script of tools/ in this process as `python tools/NAME.py ARGS` would, and return its exit code."""

import runpy
import sys
from pathlib import Path

TOOLS = Path(__file__).resolve().parents[1] / "tools"


def run_tool(name: str, *argv: str) -> int:
    script = TOOLS / name
    old = sys.argv
    sys.argv = [str(script), *argv]
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as done:
        return done.code
    finally:
        sys.argv = old
    return 0
