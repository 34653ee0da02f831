"""The Ray Serve config file of a deployment (`ddit-export serve ... --write-config serve.yaml`).

The file is what `serve run serve.yaml` (one machine) and `serve deploy serve.yaml` (a running Ray
cluster, e.g. the `serveConfigV2` of a KubeRay RayService, docs/serving.md) take: the HTTP address, one
application importing `ddit_export.serve.app:build_app` with the engine folders as arguments, and the
deployment's replicas (or autoscaling) and per-replica resources, and the ingress in front of them
(serve/ingress.py); both finish their requests before Ray stops them (`graceful_shutdown_timeout_s`).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from ..util.atomic import write_text_atomic
from .app import deployment_options, ingress_options
from .requests import DRAIN_TIMEOUT_S

APP_NAME = "ddit"
IMPORT_PATH = "ddit_export.serve.app:build_app"


def serve_config(*, engine_dir: Path, batch_dirs: list[Path], backend: str, max_batch: int, batch_wait_ms: float,
                 host: str, port: int, replicas: int | None, autoscale: tuple[int, int] | None, num_cpus: float,
                 num_gpus: float, embeds_dir: Path | None = None, default_steps: int = 28,
                 default_cache: str | None = None, drain_timeout_s: float = DRAIN_TIMEOUT_S,
                 lora_dir: Path | None = None) -> dict:
    args = {"engine_dir": str(Path(engine_dir).resolve()), "backend": backend,
            "batch_dirs": [str(Path(d).resolve()) for d in batch_dirs], "max_batch": max_batch,
            "batch_wait_ms": batch_wait_ms, "default_steps": default_steps}
    if embeds_dir is not None:
        args["embeds_dir"] = str(Path(embeds_dir).resolve())
    if default_cache is not None:
        args["default_cache"] = default_cache
    if lora_dir is not None:
        args["lora_dir"] = str(Path(lora_dir).resolve())
    deployment = {"name": "DDiTServer",
                  **deployment_options(replicas, autoscale, max_batch, num_cpus, num_gpus, drain_timeout_s)}
    ingress = {"name": "DDiTIngress", **ingress_options(drain_timeout_s)}
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": host, "port": port},
        "applications": [{"name": APP_NAME, "route_prefix": "/", "import_path": IMPORT_PATH, "args": args,
                          "deployments": [deployment, ingress]}],
    }


def write_config(path: str | Path, config: dict) -> Path:
    """Write the config completely or not at all (a temporary file beside it, then one rename)."""
    header = "# Ray Serve config written by `ddit-export serve --write-config`; run: serve run THIS_FILE\n"
    return write_text_atomic(Path(path).expanduser(), header + yaml.safe_dump(config, sort_keys=False))
