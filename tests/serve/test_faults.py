"""The server's own faults, for real on the demo engines over loopback: `ddit-export serve` stopped by SIGTERM
(what Kubernetes and systemd send) drains and exits 0 within its bound; a replica SIGKILLed during a load test
loses no request (the ingress sends it again to a live replica) and every answer equals its solo run."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from tests.serve.helpers import demo_engine_folders
from tests.serve.test_app import free_port, get, post, solo_run

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

DRAIN_S = 60  # --drain-timeout: far above the long request, so a cut would be a bug, not a slow machine
SHUTDOWN_BOUND_S = 15  # Ray's own shutdown after the drain (about 1 s on the idle 2-core machine)
START_BOUND_S = 240  # Ray + the replica on a loaded machine


def _wait_until_up(url: str, proc: subprocess.Popen) -> None:
    deadline = time.time() + START_BOUND_S
    while time.time() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        try:
            get(url, "/healthz", timeout=5)
            return
        except OSError:
            time.sleep(1)
    raise AssertionError(f"serve did not answer /healthz within {START_BOUND_S} s")


def _status(url: str, path: str) -> int:
    try:
        with urllib.request.urlopen(f"{url}{path}", timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


def test_sigterm_drains_the_request_in_flight_refuses_new_ones_and_exits_0():
    solo_dir, _ = demo_engine_folders()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ddit_export.cli", "serve", str(solo_dir), "--max-batch", "1", "--port", str(port),
         "--drain-timeout", str(DRAIN_S)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        _wait_until_up(url, proc)
        long = {"prompt": "red circle", "seed": 4, "steps": 600, "schedule": "2x600", "output": "latent"}
        answer: list = []
        sender = threading.Thread(target=lambda: answer.append(post(url, long, timeout=DRAIN_S + 30)))
        sender.start()
        deadline = time.time() + 30
        while get(url, "/healthz")["in_flight"] == 0 and time.time() < deadline:
            time.sleep(0.05)
        signalled = time.time()
        proc.send_signal(signal.SIGTERM)
        deadline = time.time() + 10
        while _status(url, "/healthz") != 503 and time.time() < deadline:  # draining: out of rotation
            time.sleep(0.05)
        status, body, headers = post(url, {"prompt": "cyan ring", "steps": 2, "output": "latent"})
        assert status == 503 and headers["retry-after"] == "1" and "shutting down" in json.loads(body)["error"]
        output, _ = proc.communicate(timeout=DRAIN_S + SHUTDOWN_BOUND_S)
        exited = time.time() - signalled
        sender.join(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
    assert proc.returncode == 0, output
    assert "draining 1 request(s) in flight" in output and "drained in" in output
    assert "SIGTERM received" not in output and "Traceback" not in output  # no Ray stack dump, no abort
    assert exited < DRAIN_S + SHUTDOWN_BOUND_S
    status, body, headers = answer[0]
    assert status == 200, body
    from ddit_export.runtime.backends import get_backend

    with get_backend("onnx", solo_dir) as backend:
        alone = solo_run(backend, "red circle", 4, 600, "2x600")
    assert json.loads(headers["x-ddit-trace"])["schedule"] == alone.trace.schedule
    assert np.array_equal(np.load(io.BytesIO(body)), alone.latent.numpy())


@pytest.fixture(scope="module")
def two_replicas():
    from ddit_export.serve.app import bind_app, deployment_options

    solo_dir, _ = demo_engine_folders()
    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(bind_app({"engine_dir": str(solo_dir), "max_batch": 2, "batch_wait_ms": 5},
                           deployment_options(replicas=2, max_batch=2, num_cpus=0.5)),
                  name="ddit", route_prefix="/")
        yield {"url": f"http://127.0.0.1:{port}", "solo_dir": solo_dir}
    finally:
        serve.shutdown()
        ray.shutdown()


def test_a_replica_killed_during_a_load_test_loses_no_request(two_replicas):
    from ddit_export.serve.load_test import build_bodies, run_load, verify

    url = two_replicas["url"]
    bodies = build_bodies(48, steps=12, seed=100, prompts=["red circle", "cyan ring", "white checkered circle"])
    report = run_load(url, bodies, concurrency=8, time_limit=240, timeout=120, kill_after=12)
    report.verification = verify(report, str(two_replicas["solo_dir"]))
    summary = report.summary()
    assert summary["killed_replica_pid"] is not None
    assert summary["errors"] == 0 and summary["not_sent"] == 0 and summary["ok"] == 48, summary["error_examples"]
    assert summary["verification"]["equal"] == summary["verification"]["checked"] == 48
    health = get(url, "/healthz")
    assert health["retried"] >= 1  # the kill hit requests in flight, and they were sent again
