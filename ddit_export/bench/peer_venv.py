"""The isolated venv that `bench --peer` runs optimum-onnx in when it does not import here.

optimum-onnx 0.1.0 pins transformers<4.58, hence huggingface_hub<1.0, hence diffusers<0.40: it cannot
share a process with the default install. So the peer export runs in a venv of its own:

* where: ``--peer-venv PATH`` if given, else ``$DDIT_EXPORT_PEER_VENV``, else
  ``${XDG_CACHE_HOME:-~/.cache}/ddit-export/peer-optimum-<12 hex of sha256(pins)>``;
* reused when it is complete: it holds ``MARKER`` (written last) listing exactly ``PEER_PINS``. A path
  given explicitly that holds any venv (``pyvenv.cfg`` and ``bin/python``) is used as it is, e.g. one
  made by ``pip install -e ".[optimum]"``;
* else built: ``python -m venv`` into a temp folder beside it, ``pip install PEER_PINS`` (pip's own
  config: index, find-links, constraints), the marker, then one rename. It is driven only through
  ``bin/python -m ...``, which the rename keeps valid (console-script shebangs inside keep the temp path);
* the peer code is ours: the worker (`peer_worker`) is run with a folder on PYTHONPATH that holds only a
  link to this ``ddit_export`` package, so the venv never installs ddit-export and none of the main
  install's packages leak in.

Worker protocol (``peer_worker``): ``PY -m ddit_export.bench.peer_worker ENGINE_DIR OUT_DIR [--opset N]``;
it loads the manifest's model, checks its sha256, exports it with optimum-onnx to ``OUT_DIR/model.onnx``
and prints one JSON line last on stdout, ``{"ok": true, "file": ..., "versions": {...}}`` or
``{"ok": false, "error": "one line"}`` (exit status 0 / 1). The main process then loads that file in its
own ONNX Runtime, so both graphs are timed on the same runtime, round-robin, in one process.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

# Keep equal to pyproject's `[optimum]` extra plus the torch pin (tests/bench/test_peer_venv.py checks).
OPTIMUM_EXTRA = ("optimum-onnx==0.1.0", "transformers>=4.45,<4.58", "huggingface_hub>=0.34,<1", "diffusers>=0.35,<0.40")
# onnxruntime: optimum runs it after export to fix the dynamic shapes (the timing runs in the main process)
PEER_PINS = (*OPTIMUM_EXTRA, "torch==2.13.0", "numpy>=1.26", "onnx>=1.17", "onnxruntime>=1.20", "safetensors>=0.4")
MARKER = ".ddit-export-peer-complete"
ENV_VAR = "DDIT_EXPORT_PEER_VENV"


class PeerVenvError(RuntimeError):
    """One line: what failed and the fix."""


def pins_hash(pins=PEER_PINS) -> str:
    return hashlib.sha256("\n".join(pins).encode()).hexdigest()[:12]


def default_venv(pins=PEER_PINS) -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "ddit-export" / f"peer-optimum-{pins_hash(pins)}"


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def is_complete(venv: Path, pins=PEER_PINS) -> bool:
    marker = venv / MARKER
    try:
        return venv_python(venv).exists() and json.loads(marker.read_text()).get("pins") == list(pins)
    except (OSError, ValueError, AttributeError):
        return False


def is_venv(venv: Path) -> bool:
    return (venv / "pyvenv.cfg").is_file() and venv_python(venv).exists()


def resolve_venv(explicit: str | os.PathLike | None = None) -> tuple[Path, bool]:
    """(path, given): the option, else the env var, else the default cache folder."""
    chosen = explicit or os.environ.get(ENV_VAR)
    return (Path(chosen).expanduser().absolute(), True) if chosen else (default_venv(), False)


def _pip_error(log: Path) -> str:
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip() and ln[:2] != "$ "]
    errors = [ln for ln in lines if ln.startswith("ERROR")]
    return (errors or lines or ["no output"])[-1][:300]


def ensure_venv(explicit=None, pins=PEER_PINS, progress: Callable[[str], None] = print,
                python: str = sys.executable, run=subprocess.run) -> Path:
    """The peer venv's folder, built first if missing (see the module doc). Raises PeerVenvError."""
    venv, given = resolve_venv(explicit)
    if is_complete(venv, pins) or (given and is_venv(venv)):
        return venv
    if venv.exists():
        raise PeerVenvError(
            f"{venv} exists but is not a complete peer venv (no {MARKER} for these pins"
            f"{'' if given else ', nor a venv'}); remove it (rm -r {venv}) to have it rebuilt, "
            "or pass --peer-venv to a venv holding ddit-export's [optimum] extra")
    venv.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{venv.name}.tmp-", dir=venv.parent))
    log = venv.parent / f"{venv.name}.pip.log"
    try:
        progress(f"building the optimum peer venv at {venv} (python -m venv + pip install of "
                 f"{len(pins)} pins, once; reused afterwards; pip log: {log})")
        with open(log, "w") as out:
            for cmd in ([python, "-m", "venv", str(tmp)],
                        [str(venv_python(tmp)), "-m", "pip", "install", "--no-input", *pins]):
                out.write("$ " + " ".join(cmd) + "\n")
                out.flush()
                done = run(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=_clean_env())
                if done.returncode:
                    out.flush()
                    step = "python -m venv" if cmd[1:3] == ["-m", "venv"] else "pip install"
                    raise PeerVenvError(
                        f"building the peer venv failed at {step}: {_pip_error(log)} (full log: {log}); "
                        "fix: make a package index reachable (pip config / PIP_INDEX_URL / PIP_FIND_LINKS) "
                        "and rerun, or pass --peer-venv to a venv holding ddit-export's [optimum] extra")
        (tmp / MARKER).write_text(json.dumps({"pins": list(pins)}))
        tmp.chmod(0o755)  # mkdtemp's 0700 otherwise
        try:
            tmp.rename(venv)
        except OSError:
            if not is_complete(venv, pins):  # lost a race to another complete build: take that one
                raise
        return venv
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _clean_env() -> dict[str, str]:
    """This process's env less what would point the venv's python at the main install's packages."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}


def worker_env(link_dir: Path) -> dict[str, str]:
    """Env for the worker: PYTHONPATH holds only a link to this ddit_export package (not the main
    site-packages), and the caller's thread settings pass through."""
    package = Path(__file__).resolve().parents[1]
    link = link_dir / "ddit_export"
    if not link.exists():
        link.symlink_to(package, target_is_directory=True)
    env = _clean_env()
    env["PYTHONPATH"] = str(link_dir)
    return env


def run_worker(venv: Path, engine_dir: Path, out_dir: Path, opset: int, run=subprocess.run) -> dict:
    """Export the peer in the venv; the worker's JSON reply (see the module doc). Raises PeerVenvError."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ddit-peer-path-") as link_dir:
        proc = run([str(venv_python(venv)), "-m", "ddit_export.bench.peer_worker", str(engine_dir), str(out_dir),
                    "--opset", str(opset)], env=worker_env(Path(link_dir)), stdin=subprocess.DEVNULL,
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = [ln for ln in (proc.stdout or "").splitlines() if ln.strip()]
    try:
        reply = json.loads(lines[-1])
    except (IndexError, ValueError):
        tail = [ln for ln in (proc.stderr or "").splitlines() if ln.strip()][-1:] or ["no output"]
        raise PeerVenvError(f"the peer worker in {venv} exited {proc.returncode} without a reply: {tail[0][:300]}") \
            from None
    if not reply.get("ok"):
        raise PeerVenvError(f"the peer worker in {venv} failed: {reply.get('error')}")
    return reply
