"""`ddit-export --help` and argument errors answer before any heavy library is imported."""

import resource
import subprocess
import sys

import pytest

CPU_BUDGET_S = 1.0  # the bar: under a second of CPU for help and argument errors


def _child_cpu_seconds(args: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run([sys.executable, "-m", "ddit_export.cli", *args], capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), result


@pytest.mark.parametrize("args, code", [
    (["--help"], 0),
    (["flux", "--help"], 0),
    (["generate", "--help"], 0),
    (["flux", "--height", "0"], 2),
    (["generate", "engines/x", "--steps", "1000000000"], 2),
    (["bench", "engines/x", "--tau", "nan"], 2),
])
def test_help_and_argument_errors_cost_under_a_second_of_cpu(args, code):
    seconds, result = _child_cpu_seconds(args)
    assert result.returncode == code, result.stderr
    assert seconds < CPU_BUDGET_S, f"{args}: {seconds:.2f} s CPU"
    if code == 2:
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_building_the_parser_imports_no_torch():
    probe = "import sys; from ddit_export.cli import build_parser; build_parser(); print(sorted(" \
            "m for m in ('torch', 'diffusers', 'onnxruntime', 'numpy') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
