"""`ddit-export`: thin command line over the library. Parse, call, print.

Bad input is reported as one line on stderr with exit code 2; a failed validation (the tools ran
but the engine is wrong) exits 1 with the measured error.
"""

from __future__ import annotations

import argparse
import sys

from . import __version__
from .commands import bench_cmd, calibrate_cmd, demo_cmd, export_cmd, inspect_cmd, schedules_cmd, train_cmd

COMMANDS = {
    "demo": (demo_cmd, "export the embedded demo model and compare DDiT with the static base (speed and quality)"),
    "flux": (export_cmd, "export one static engine per patch size for a FLUX transformer"),
    "wan": (export_cmd, "export one static engine per patch size for a Wan 2.1 video transformer"),
    "inspect": (inspect_cmd, "print an engine folder's manifest readably"),
    "bench": (bench_cmd, "per-engine latency, FLOPs and end-to-end speed-ups of an engine folder"),
    "calibrate": (calibrate_cmd, "sweep tau/rho, pick tau for a quality budget, store it in the manifest"),
    "schedules": (schedules_cmd, "compare the dynamic rule(s) with fixed schedules of the same cost (Pareto table)"),
    "train": (train_cmd, "distil DDiT adapters (one per extra patch size) from the frozen base model"),
}


def _optional_commands() -> dict:
    """Commands whose modules may be absent in a partial install; each registers if importable."""
    found = {}
    try:
        from .commands import generate_cmd

        found["generate"] = (generate_cmd, "run a denoising loop on exported engines with DDiT scheduling")
    except ImportError:
        pass
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ddit-export", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"ddit-export {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in {**COMMANDS, **_optional_commands()}.items():
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        if module is export_cmd:
            module.add_arguments(cmd, family=name)
        else:
            module.add_arguments(cmd)
        cmd.set_defaults(handler=module.run, command_name=name)
    return parser


def quiet_third_party() -> None:
    """Keep the terminal for our own progress: other libraries' chatter goes to errors only."""
    import logging

    import torch  # noqa: F401  (torch sets its loggers' levels on import: set ours after that)

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    logging.getLogger("torch._export").setLevel(logging.ERROR)
    try:
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        diffusers_logging.set_verbosity_error()
        transformers_logging.set_verbosity_error()
    except ImportError:
        pass


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_third_party()
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
