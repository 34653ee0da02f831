"""`ddit-export`: thin command line over the library. Parse, call, print.

Bad input is reported as one line on stderr with exit code 2; a failed validation (the tools ran
but the engine is wrong) exits 1 with the measured error.
"""

from __future__ import annotations

import argparse
import os
import sys
from importlib import import_module

from . import __version__
from .commands.argtypes import OneLineParser
from .families.defaults import FAMILY_DEFAULTS
from .util import stop

# Command modules import only argparse and rich at module level (torch, diffusers and ONNX load
# inside the handlers), so `--help` and argument errors answer at once.
COMMANDS = {
    "demo": ("demo_cmd", "export the embedded demo model and compare DDiT with the static base (speed and quality)"),
    **{family: ("export_cmd", defaults.help) for family, defaults in FAMILY_DEFAULTS.items()},  # flux, wan
    "inspect": ("inspect_cmd", "print an engine folder's manifest readably"),
    "generate": ("generate_cmd", "run a denoising loop on exported engines with DDiT scheduling"),
    "bench": ("bench_cmd", "per-engine latency, FLOPs and end-to-end speed-ups of an engine folder"),
    "calibrate": ("calibrate_cmd", "sweep tau/rho, pick tau for a quality budget, store it in the manifest"),
    "schedules": ("schedules_cmd", "compare the dynamic rule(s) with fixed schedules of the same cost (Pareto table)"),
    "serve": ("serve_cmd", "serve the engines over HTTP on Ray Serve, batching requests per replica"),
    "train": ("train_cmd", "distil DDiT adapters (one per extra patch size) from the frozen base model"),
}
EXPORT_FAMILIES = tuple(FAMILY_DEFAULTS)  # one export command per family


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="ddit-export", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"ddit-export {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        module = import_module(f"{__package__}.commands.{module_name}")
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        if name in EXPORT_FAMILIES:
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
    stop.install()  # SIGTERM unwinds like Ctrl-C, and neither can be lost (util/stop.py)
    quiet_third_party()
    return args.handler(args)


def entry_point() -> None:
    """The `ddit-export` script (and `python -m ddit_export.cli`): `main`, then exit with its code.

    Exit 130 / 143 on Ctrl-C / SIGTERM wherever it lands. A KeyboardInterrupt that escapes to the interpreter
    makes Python end the process by re-sending itself SIGINT (exit -2 instead of 130): that happened when the
    signal landed outside a command's `run_guarded`, e.g. while `main` imports torch (`quiet_third_party`),
    which the tests reproduce. An interrupted command has already cleaned up and printed its one line; it
    then leaves at once (`os._exit`), skipping interpreter shutdown, where nothing is left to do.
    """
    try:
        code = main()
    except KeyboardInterrupt as signal:
        code = 143 if isinstance(signal, stop.Terminated) else 130
        print("terminated" if code == 143 else "interrupted", file=sys.stderr)
    if code in (130, 143):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entry_point()
