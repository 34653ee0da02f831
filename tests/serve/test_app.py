"""The Ray Serve application for real: one local Ray instance (CPU) for the module, the demo engines,
HTTP over loopback. Checks answers against solo runs, batching, refusals, metrics and a replica kill
(more faults: test_faults.py)."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch

from ddit_export.demo.tuning import DEMO_SIZES
from tests.serve.helpers import VARIANT_BATCH, demo_engine_folders

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

BATCH_WAIT_MS = 500  # long, so requests sent together surely share a batch


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from safetensors.torch import save_file

    from ddit_export.pipelines.demo.class_table import demo_conditioning
    from ddit_export.serve.app import bind_app, deployment_options

    solo_dir, batch_dir = demo_engine_folders()
    embeds = tmp_path_factory.mktemp("embeds")
    cond = demo_conditioning("red circle")
    save_file({"encoder_hidden_states": cond.encoder_hidden_states.contiguous(),
               "pooled_projections": cond.pooled_projections.contiguous()}, str(embeds / "circle.safetensors"))
    port, metrics_port = free_port(), free_port()
    os.environ["RAY_metrics_report_interval_ms"] = "500"
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False,
             _metrics_export_port=metrics_port)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        options = deployment_options(replicas=1, max_batch=VARIANT_BATCH, num_cpus=0.5)
        serve.run(bind_app({"engine_dir": str(solo_dir), "batch_dirs": [str(batch_dir)], "max_batch": VARIANT_BATCH,
                             "batch_wait_ms": BATCH_WAIT_MS, "embeds_dir": str(embeds)}, options),
                  name="ddit", route_prefix="/")
        yield {"url": f"http://127.0.0.1:{port}", "metrics": f"http://127.0.0.1:{metrics_port}/metrics",
               "solo_dir": solo_dir}
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def solo(server):
    from ddit_export.runtime.backends import get_backend

    backend = get_backend("onnx", server["solo_dir"])
    yield backend
    backend.close()


def post(url: str, body, timeout: float = 60.0, raw: bytes | None = None):
    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request(f"{url}/v1/generate", data=data, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read(), resp.headers
    except urllib.error.HTTPError as err:
        return err.code, err.read(), err.headers


def get(url: str, path: str, timeout: float = 10.0):
    with urllib.request.urlopen(f"{url}{path}", timeout=timeout) as resp:
        return json.loads(resp.read())


def solo_run(solo, prompt: str, seed: int, steps: int, schedule: str | None = None):
    from ddit_export.pipelines import generate, make_conditioning
    from ddit_export.runtime.runner import schedule_config
    from ddit_export.runtime.schedule_spec import parse_schedule

    config = schedule_config(solo, schedule=parse_schedule(schedule) if schedule else None)
    return generate(solo, make_conditioning(solo.manifest, prompt), config, steps=steps, seed=seed)


def test_health(server):
    health = get(server["url"], "/healthz")
    assert health["status"] == "ok" and health["batches"] == [1, VARIANT_BATCH] and health["patch_sizes"] == [2, 4, 8]
    assert health["ingress_pid"] != health["pid"] and health["retried"] == 0  # the HTTP front is its own process
    # the replica reserved one CPU, so every engine runs ONNX Runtime on one thread (app.replica_backend_options)
    assert set(health["ort_cpu_threading"].values()) == {"single"} and len(health["ort_cpu_threading"]) == 6


def test_png_and_latent_match_a_solo_run(server, solo):
    status, body, headers = post(server["url"], {"prompt": "red circle", "seed": 0, "steps": 28})
    assert status == 200 and headers["content-type"] == "image/png" and body[:8] == b"\x89PNG\r\n\x1a\n"
    trace = json.loads(headers["x-ddit-trace"])
    alone = solo_run(solo, "red circle", 0, 28)
    assert trace["schedule"] == alone.trace.schedule and len(trace["step_seconds"]) == 28
    assert 0 < trace["token_cost"] < 1  # the demo's tuned rule runs coarse steps

    status, body, headers = post(server["url"], {"prompt": "Red  Circle", "seed": 0, "steps": 28, "output": "latent"})
    assert status == 200 and headers["content-type"] == "application/x-npy"
    assert np.array_equal(np.load(io.BytesIO(body)), alone.latent.numpy())


def test_stored_embeddings_equal_the_prompt(server, solo):
    status, body, _ = post(server["url"], {"prompt_embeds_id": "circle", "seed": 3, "steps": 8, "output": "latent"})
    assert status == 200
    assert np.array_equal(np.load(io.BytesIO(body)), solo_run(solo, "red circle", 3, 8).latent.numpy())


def test_concurrent_requests_share_engine_calls_and_keep_their_results(server, solo):
    requests = [{"prompt": p, "seed": s, "steps": 10, "output": "latent"}
                for p, s in (("red circle", 11), ("white checkered circle", 12), ("cyan ring", 13))]
    answers: list = [None] * len(requests)

    def send(i):
        answers[i] = post(server["url"], requests[i])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    # the replica shares a call only where its own start-up timing (BatchedRunner.calibrate) says one batch-4 call
    # beats three batch-1 calls; on a loaded machine that can flip at the size all three warm up at together (the
    # coarsest of the demo's default sizes)
    warm = max(DEMO_SIZES)
    call_ms = get(server["url"], "/healthz")["call_ms"]
    pays = call_ms[f"b{VARIANT_BATCH}p{warm}"] <= len(requests) * call_ms[f"b1p{warm}"]
    for req, (status, body, headers) in zip(requests, answers):
        assert status == 200
        trace = json.loads(headers["x-ddit-trace"])
        alone = solo_run(solo, req["prompt"], req["seed"], req["steps"])
        assert trace["schedule"] == alone.trace.schedule
        assert np.array_equal(np.load(io.BytesIO(body)), alone.latent.numpy())
        at_warm = {n for p, n in zip(trace["schedule"], trace["batch_sizes"]) if p == warm}
        assert max(at_warm) == len(requests) if pays else at_warm == {1}, (call_ms, trace["batch_sizes"])


@pytest.mark.parametrize("body, raw, status, words", [
    ({"prompt": "purple blob", "seed": 0}, None, 422, "unknown prompt"),
    ({"prompt": "red circle", "steps": 0}, None, 422, "'steps' must be an integer from 1"),
    ({"prompt": "red circle", "sizes": [2, 16]}, None, 422, "[16]"),
    ({"prompt_embeds_id": "nobody"}, None, 422, "unknown prompt_embeds_id"),
    (None, b'{"prompt": "red', 400, "not valid JSON"),
    (None, b"{" + b" " * 70000 + b"}", 413, "limit"),
])
def test_bad_requests_get_one_json_message(server, body, raw, status, words):
    code, payload, headers = post(server["url"], body, raw=raw)
    assert code == status and headers["content-type"] == "application/json"
    answer = json.loads(payload)
    assert answer["status"] == status and words in answer["error"] and "Traceback" not in answer["error"]


def test_unknown_route_and_method(server):
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(f"{server['url']}/v1/generate", timeout=10)
    assert caught.value.code == 405
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(f"{server['url']}/v2/anything", timeout=10)
    assert caught.value.code == 404 and "POST /v1/generate" in json.loads(caught.value.read())["error"]


def test_prometheus_metrics(server):
    """Ray's metrics agent exports the replica's metrics (every 0.5 s here); the earlier tests fed them."""
    wanted = ("ray_ddit_requests", "ray_ddit_errors", "ray_ddit_request_latency_seconds_bucket", "ray_ddit_steps",
              "ray_ddit_tokens_saved", f'patch_size="{max(DEMO_SIZES)}"', 'status="422"', 'kind="http_413"')
    deadline, text = time.time() + 30, ""
    while time.time() < deadline and not all(w in text for w in wanted):
        time.sleep(0.5)
        with urllib.request.urlopen(server["metrics"], timeout=10) as resp:
            text = resp.read().decode()
    assert [w for w in wanted if w not in text] == []


def test_killed_replica_is_replaced_and_its_request_answered_there(server, solo):
    """Last in the module: SIGKILL the only replica mid-request; Ray starts a new one and the ingress sends the
    request again there (serve/ingress.py): it is answered, equal to its solo run, and nothing hangs."""
    url = server["url"]
    before = get(url, "/healthz")["pid"]
    answer: list = []
    long = {"prompt": "red circle", "seed": 5, "steps": 600, "schedule": "2x600", "output": "latent"}
    thread = threading.Thread(target=lambda: answer.append(post(url, long, timeout=240)))
    thread.start()
    deadline = time.time() + 30
    while get(url, "/healthz")["in_flight"] == 0 and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(BATCH_WAIT_MS / 1000 + 0.2)  # past the batch window: sampling
    os.kill(before, signal.SIGKILL)
    thread.join(240)
    assert not thread.is_alive(), "the in-flight request hung"
    status, body, headers = answer[0]
    assert status == 200, body
    trace = json.loads(headers["x-ddit-trace"])
    alone = solo_run(solo, "red circle", 5, 600, "2x600")
    assert trace["replica_pid"] != before and trace["schedule"] == alone.trace.schedule
    assert np.array_equal(np.load(io.BytesIO(body)), alone.latent.numpy())
    health = get(url, "/healthz")
    assert health["pid"] != before and health["retried"] >= 1
    status, body, _ = post(url, {"prompt": "cyan ring", "seed": 9, "steps": 6, "output": "latent"})
    assert status == 200 and np.array_equal(np.load(io.BytesIO(body)), solo_run(solo, "cyan ring", 9, 6).latent.numpy())
    _ = torch  # the solo runs' tensors
