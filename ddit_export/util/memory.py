"""Host memory and disk: peak resident memory of a piece of work, and what is free before it starts.

`PeakMemory` measures the peak resident set size (RSS) of this process over a block: exactly from the
kernel's high-water mark (VmHWM) when the block set a new one, else from a sampling thread (the
high-water mark is never reset: that would also erase the peak that `/usr/bin/time` reports).

`available_memory` / `available_disk` are what the export's pre-flight check compares its estimate
with. The environment variables below override what they report, so that a low limit can be tried
on any host (tests, CI, or a container whose cgroup limit psutil does not see):

    DDIT_EXPORT_AVAILABLE_MEMORY=8GiB   DDIT_EXPORT_AVAILABLE_DISK=20GB
"""

from __future__ import annotations

import os
import re
import shutil
import threading
from pathlib import Path

import psutil

MEMORY_ENV = "DDIT_EXPORT_AVAILABLE_MEMORY"
DISK_ENV = "DDIT_EXPORT_AVAILABLE_DISK"
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(text: str, what: str = "size") -> int:
    """'8GiB', '500 MB', '1234' -> bytes; one ValueError line otherwise."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
    unit = match and match.group(2).lower()
    if not match or unit not in _UNITS:
        raise ValueError(f"{what} must be a number of bytes with an optional unit like 8GiB or 500MB (got {text!r})")
    return int(float(match.group(1)) * _UNITS[unit])


def gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def available_memory() -> int:
    """Memory the system can give without swapping (psutil's `available`), or $DDIT_EXPORT_AVAILABLE_MEMORY."""
    if os.environ.get(MEMORY_ENV):
        return parse_bytes(os.environ[MEMORY_ENV], MEMORY_ENV)
    return int(psutil.virtual_memory().available)


def available_disk(path: Path) -> int:
    """Free bytes on the file system of `path` (its nearest existing parent), or $DDIT_EXPORT_AVAILABLE_DISK."""
    if os.environ.get(DISK_ENV):
        return parse_bytes(os.environ[DISK_ENV], DISK_ENV)
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return int(shutil.disk_usage(path).free)


def _high_water_mark() -> int | None:
    """VmHWM of this process in bytes (Linux), else None."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class PeakMemory:
    """`with PeakMemory() as peak: ...` then `peak.host_bytes`: the block's peak RSS of this process."""

    def __init__(self, interval_s: float = 0.02):
        self.interval_s, self.host_bytes = interval_s, 0
        self._process = psutil.Process()
        self._stop = threading.Event()
        self._sampled = 0

    def __enter__(self) -> PeakMemory:
        self._hwm_before = _high_water_mark()
        self._sampled = self._process.memory_info().rss
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, name="peak-memory", daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sampled = max(self._sampled, self._process.memory_info().rss)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sampled = max(self._sampled, self._process.memory_info().rss)
        after = _high_water_mark()
        if after is not None and self._hwm_before is not None and after > self._hwm_before:
            self.host_bytes = after  # a new high-water mark was set inside the block: that is its peak, exactly
        else:
            self.host_bytes = self._sampled


def release_weights(*modules) -> None:
    """Free the storage of every parameter and buffer of `modules` now, whoever else still refers to it.

    torch.onnx's dynamo exporter (torch 2.13) keeps references to the weights of a module it exported
    after the program is gone (measured: every weight still alive after `del` of module and program,
    referred to from outside Python), so dropping the model frees nothing and validation would hold
    it beside the runtime's copy. The export calls this when it is done with the model for good: the
    storages shrink to 0 bytes, any stale reference holds an empty tensor. Storages that cannot be
    resized (memory borrowed from numpy or a file) are left as they are.
    """
    for module in modules:
        for t in [*module.parameters(), *module.buffers()]:
            try:
                t.untyped_storage().resize_(0)
            except RuntimeError:
                pass


def byte_chunks(tensor, chunk: int = 1 << 26):
    """A tensor's bytes in order, as numpy arrays of at most `chunk` bytes, each made from a COPY of its slice.

    `.numpy()` on the tensor itself would pin its storage (torch refuses to resize a storage numpy has seen),
    and `release_weights` could then not free the model before validation: hashing the weights that way kept
    a whole second copy alive through every export's validation (docs/export-memory.md). A copy per chunk
    costs one chunk of memory."""
    import torch

    flat = tensor.detach().contiguous().cpu().reshape(-1).view(torch.uint8)
    for start in range(0, flat.numel(), chunk):
        yield flat[start:start + chunk].clone().numpy()


def release_freed_memory() -> None:
    """Hand memory freed by Python back to the system (glibc keeps freed heap pages otherwise, so a dropped
    model would still count in RSS and in what the next step can allocate). No-op off glibc."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
