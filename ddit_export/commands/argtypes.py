"""argparse `type=` converters over util/limits.py: a bad value is refused while parsing, in one line."""

from __future__ import annotations

import argparse
from functools import partial

from ..util import limits


def _argtype(check, name: str):
    """Wrap a limits check (value, flag) into an argparse type; argparse names the flag itself."""

    def convert(text: str):
        try:
            return check(text, "value")
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err).removeprefix("value ")) from None

    convert.__name__ = name  # argparse prints it in "invalid <name> value"
    return convert


positive_int = _argtype(limits.check_int, "integer")
non_negative_int = _argtype(partial(limits.check_int, low=0), "integer")
steps = _argtype(partial(limits.check_int, high=limits.MAX_STEPS), "steps")
seed = _argtype(limits.check_seed, "seed")
pixels = _argtype(partial(limits.check_int, high=limits.MAX_SIDE), "pixels")
frames = _argtype(partial(limits.check_int, high=limits.MAX_FRAMES), "frames")
batch = _argtype(partial(limits.check_int, high=limits.MAX_BATCH), "batch")
text_len = _argtype(partial(limits.check_int, high=limits.MAX_TEXT_LEN), "text length")
tau = _argtype(limits.check_tau, "tau")
rho = _argtype(limits.check_rho, "rho")
non_negative_float = _argtype(partial(limits.check_float, low=0.0), "number")
finite_float = _argtype(limits.check_float, "number")
positive_float = _argtype(partial(limits.check_float, low=0.0, low_open=True), "number")


def backend(text: str) -> str:
    """A backend name of the registry (runtime/backend_names.py: plain data, so parsing imports no torch)."""
    from ..runtime.backend_names import BACKENDS, unknown_backend

    if text not in BACKENDS:
        raise argparse.ArgumentTypeError(unknown_backend(text))
    return text
def resolutions(text: str):
    """"1024x1024,768x1344" -> ((1024, 1024), (768, 1344)); the request checks each bucket's geometry."""
    try:
        return limits.check_resolutions(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err).removeprefix("--resolutions").lstrip(": ")) from None


resolutions.__name__ = "resolutions"


class OneLineParser(argparse.ArgumentParser):
    """argparse's errors as one line on stderr (exit 2), pointing at --help instead of a usage dump."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")
