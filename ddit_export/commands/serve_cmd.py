"""`ddit-export serve`: the engines behind an HTTP API on Ray Serve (docs/serving.md).

Starts a local Ray instance (or joins `--address`), runs the `DDiTServer` application and blocks
until SIGTERM or Ctrl-C: then it drains (new requests get 503, those in flight finish, for at most
`--drain-timeout` seconds), shuts Serve and Ray down and exits 0 (1 if requests had to be cut; a
second signal stops at once). With `--max-batch B > 1` the engines are also
exported at batch B (`ENGINE_DIR.batchB`, reused when unchanged) before Ray starts. `--write-config
FILE` writes the Ray Serve config for `serve run` / `serve deploy` instead of serving.
"""

from __future__ import annotations

import argparse
import socket
import time
from pathlib import Path

from rich.console import Console

from ..serve.requests import DRAIN_TIMEOUT_S
from . import argtypes
from .arglists import add_backend_argument, add_cache_argument, read_engine_folder
from .errors import run_guarded

DEFAULT_MAX_BATCH = 8
DEFAULT_BATCH_WAIT_MS = 10.0


def autoscale_range(text: str) -> tuple[int, int]:
    try:
        low, high = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"give MIN,MAX replicas like 1,4 (got '{text}')") from None
    if not 0 <= low <= high or high < 1:
        raise argparse.ArgumentTypeError(f"need 0 <= MIN <= MAX and MAX >= 1 (got '{text}')")
    return low, high


def port_number(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a port is an integer from 1 to 65535 (got '{text}')") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is an integer from 1 to 65535 (got {port})")
    return port


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("engine_dir", metavar="ENGINE_DIR", help="engine folder exported at batch 1 (holds manifest.json)")
    add_backend_argument(p, "engine runtime in each replica")
    scale = p.add_mutually_exclusive_group()
    scale.add_argument("--replicas", type=argtypes.positive_int, help="fixed number of replicas (default 1)")
    scale.add_argument("--autoscale", type=autoscale_range, metavar="MIN,MAX",
                       help="autoscale between MIN and MAX replicas on ongoing requests")
    p.add_argument("--host", default="127.0.0.1", help="HTTP address (default 127.0.0.1; 0.0.0.0 for every interface)")
    p.add_argument("--port", type=port_number, default=8000, help="HTTP port (default 8000)")
    p.add_argument("--max-batch", type=argtypes.batch, default=DEFAULT_MAX_BATCH,
                   help=f"requests sampled together in lock-step per replica (default {DEFAULT_MAX_BATCH}; 1 disables)")
    p.add_argument("--batch-wait-ms", type=argtypes.non_negative_float, default=DEFAULT_BATCH_WAIT_MS,
                   help=f"how long a replica waits to fill a batch (default {DEFAULT_BATCH_WAIT_MS:g} ms)")
    p.add_argument("--steps", type=argtypes.steps, default=28, help="steps of a request that names none (default 28)")
    p.add_argument("--embeds-dir", metavar="DIR",
                   help="folder of ID.safetensors prompt embeddings that requests name by prompt_embeds_id")
    add_cache_argument(p)  # the default of requests that name no "cache"; staged folders only
    p.add_argument("--lora-dir", metavar="DIR",
                   help="folder of NAME.safetensors user LoRAs that requests name in \"loras\" (staged folders; "
                        "docs/loras.md)")
    p.add_argument("--cpus-per-replica", type=argtypes.positive_float, default=1.0,
                   help="Ray CPUs each replica reserves (default 1; with 1 or less, the onnx backend on the CPU "
                        "runs each engine on one thread, more keeps its per-engine threading tuning)")
    p.add_argument("--gpus-per-replica", type=argtypes.non_negative_float,
                   help="GPUs each replica reserves (default 1 where CUDA exists, else 0)")
    p.add_argument("--drain-timeout", type=argtypes.positive_float, default=DRAIN_TIMEOUT_S, metavar="SECONDS",
                   help=f"on SIGTERM / Ctrl-C, how long requests in flight may finish before Serve stops "
                        f"(default {DRAIN_TIMEOUT_S:g}; keep it under Kubernetes' terminationGracePeriodSeconds)")
    p.add_argument("--address", help="join a running Ray cluster (e.g. auto) instead of starting one")
    p.add_argument("--metrics-port", type=port_number, help="Ray's Prometheus export port on this node")
    p.add_argument("--write-config", metavar="serve.yaml",
                   help="write the Ray Serve config file for `serve run` / `serve deploy` and exit")


def run(args: argparse.Namespace) -> int:
    return run_guarded(lambda: serve_command(args, Console(highlight=False)))


def _check(args) -> tuple[Path, dict]:
    folder, manifest = read_engine_folder(args.engine_dir)  # before the heavy imports: a typo answers at once
    from ..runtime.backends import backend_class

    if manifest.get("family") != "flux":
        raise ValueError(f"serve runs FLUX-family engines; {folder} holds {manifest.get('family')} engines")
    if int(manifest["latent_shape"][0]) != 1:
        raise ValueError(f"{folder} was exported at batch {manifest['latent_shape'][0]}: serve the batch-1 folder "
                         "(--max-batch exports the batched engines beside it)")
    backend_class(args.backend)
    if args.embeds_dir and not Path(args.embeds_dir).expanduser().is_dir():
        raise ValueError(f"--embeds-dir {args.embeds_dir} is not a folder")
    staged = manifest.get("layout", "single") == "staged"
    if args.lora_dir and not Path(args.lora_dir).expanduser().is_dir():
        raise ValueError(f"--lora-dir {args.lora_dir} is not a folder")
    if args.lora_dir and not staged:
        raise ValueError(f"--lora-dir needs a staged engine folder (LoRAs are written into its shared trunk); "
                         f"{folder} has the single layout: re-export it with --layout staged")
    if args.cache is not None and not staged:
        raise ValueError(f"--cache {args.cache} needs a staged engine folder (a cached step reuses the trunk's "
                         f"residual); {folder} has the single layout: re-export it with --layout staged")
    if args.cache is not None and args.cache.kind == "fbcache" and \
            not manifest.get("staged", {}).get("first_block_split"):
        raise ValueError(f"--cache {args.cache} needs the trunk split after block 0; re-export {folder} with "
                         "--layout staged --first-block-split")
    return folder, manifest


def _port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as err:
            raise ValueError(f"cannot listen on {host}:{port} ({err.strerror}); choose another --port or --host") \
                from None


def serve_command(args: argparse.Namespace, console: Console) -> int:
    folder, manifest = _check(args)
    if args.write_config:  # before any export: a path that cannot be written is refused at once
        from ..util.atomic import check_writable_file

        check_writable_file(Path(args.write_config).expanduser(), "--write-config")
    import torch

    from ..serve.batch_engines import batch_variant
    from ..serve.config import serve_config, write_config

    gpus = args.gpus_per_replica if args.gpus_per_replica is not None else (1.0 if torch.cuda.is_available() else 0.0)
    batch_dirs = []
    staged = manifest.get("layout", "single") == "staged"
    if args.max_batch > 1 and staged:  # batched staged engines are not exported: lock-step on batch-1 calls
        console.print(f"{folder} is staged: requests run in lock-step, each on its own batch-1 engine calls")
    elif args.max_batch > 1:
        started = time.perf_counter()
        batch_dirs.append(batch_variant(folder, args.max_batch, args.backend))
        console.print(f"batch-{args.max_batch} engines: {batch_dirs[0]} ({time.perf_counter() - started:.1f} s)")
    config = serve_config(
        engine_dir=folder, batch_dirs=batch_dirs, backend=args.backend, max_batch=args.max_batch,
        batch_wait_ms=args.batch_wait_ms, host=args.host, port=args.port, replicas=args.replicas,
        autoscale=args.autoscale, num_cpus=args.cpus_per_replica, num_gpus=gpus,
        embeds_dir=Path(args.embeds_dir).expanduser() if args.embeds_dir else None, default_steps=args.steps,
        default_cache=str(args.cache) if args.cache is not None else None, drain_timeout_s=args.drain_timeout,
        lora_dir=Path(args.lora_dir).expanduser() if args.lora_dir else None,
    )
    if args.write_config:
        path = write_config(args.write_config, config)
        console.print(f"wrote {path}: run it with `serve run {path}` (or `serve deploy` on a running cluster)")
        return 0
    _port_free(args.host, args.port)
    return _serve(args, config, console)


def _serve(args, config: dict, console: Console) -> int:
    import ray
    from ray import serve

    from ..serve.app import bind_app
    from ..util import stop

    app_cfg = config["applications"][0]
    deployment = {k: v for k, v in app_cfg["deployments"][0].items() if k != "name"}
    replicas = args.replicas or (args.autoscale[1] if args.autoscale else 1)
    started = time.perf_counter()
    init = {"address": args.address} if args.address else {
        "num_cpus": max(2, int(-(-replicas * args.cpus_per_replica // 1))), "include_dashboard": False}
    if args.metrics_port:
        init["_metrics_export_port"] = args.metrics_port
    ray.init(**init, logging_level="ERROR", log_to_driver=False)
    # ray.init put Ray's own SIGTERM handler in place of ours (a C++ stack dump, then abort: exit 134)
    stop.install()
    try:
        serve.start(http_options={"host": args.host, "port": args.port})
        serve.run(bind_app(app_cfg["args"], deployment), name=app_cfg["name"], route_prefix="/")
        url = f"http://{args.host}:{args.port}"
        console.print(f"serving {args.engine_dir} on {url} in {time.perf_counter() - started:.1f} s: "
                      f"POST {url}/v1/generate, GET {url}/healthz (SIGTERM or Ctrl-C drains and stops)")
        while True:
            time.sleep(1)
    except KeyboardInterrupt as signal:
        return _drain(app_cfg["name"], args.drain_timeout, console,
                      "SIGTERM" if isinstance(signal, stop.Terminated) else "Ctrl-C")
    finally:
        try:
            if args.address:  # the application would outlive us on a cluster we only joined
                serve.shutdown()
        finally:
            ray.shutdown()  # the Ray instance we started ends with every process of it (~1 s)


def _drain(app_name: str, timeout_s: float, console: Console, reason: str) -> int:
    """New requests get 503 from now on; wait (at most `timeout_s`) for those in flight: 0 when none was cut."""
    from ray import serve

    started = time.perf_counter()
    try:
        ingress = serve.get_app_handle(app_name)
        waiting = ingress.drain.remote().result(timeout_s=10)
    except Exception as err:  # stopped while starting: no application to drain
        console.print(f"{reason}: stopping (nothing to drain: {type(err).__name__})")
        return 0
    console.print(f"{reason}: draining {waiting} request(s) in flight for at most {timeout_s:g} s; "
                  "new requests get 503")
    deadline = started + timeout_s
    while waiting and time.perf_counter() < deadline:
        time.sleep(0.1)
        try:
            waiting = ingress.in_flight.remote().result(timeout_s=max(0.1, deadline - time.perf_counter()))
        except Exception:  # the ingress did not answer in time: what it last said stands
            break
    seconds = time.perf_counter() - started
    if waiting:
        console.print(f"{waiting} request(s) still in flight after {seconds:.1f} s are cut: Serve and Ray shut down")
        return 1
    console.print(f"drained in {seconds:.1f} s: Serve and Ray shut down")
    return 0
