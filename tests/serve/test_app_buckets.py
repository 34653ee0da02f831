"""A folder with two resolution buckets served for real (one local Ray instance): each request's height/width
pick its bucket's loop, the answer equals a solo `generate` at that bucket, an unknown resolution is a 422."""

from __future__ import annotations

import io
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from tests.conftest import TINY_BUCKETS
from tests.serve.test_app import free_port, get, post

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

PROMPT, STEPS = "a red bicycle", 6


@pytest.fixture(scope="module")
def bucket_server(tiny_flux_bucket_engines):
    from ddit_export.serve.app import bind_app, deployment_options

    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(bind_app({"engine_dir": str(tiny_flux_bucket_engines), "max_batch": 2},
                           deployment_options(replicas=1, max_batch=2, num_cpus=0.5)),
                  name="ddit", route_prefix="/")
        yield {"url": f"http://127.0.0.1:{port}", "folder": tiny_flux_bucket_engines}
    finally:
        serve.shutdown()
        ray.shutdown()


def solo_latent(folder, bucket, seed: int):
    from ddit_export.pipelines import generate, make_conditioning
    from ddit_export.runtime.backends import get_backend
    from ddit_export.runtime.runner import schedule_config

    with get_backend("onnx", folder, bucket=bucket) as backend:
        return generate(backend, make_conditioning(backend.manifest, PROMPT), schedule_config(backend),
                        steps=STEPS, seed=seed)


def test_health_lists_the_buckets(bucket_server):
    assert get(bucket_server["url"], "/healthz")["resolutions"] == [f"{h}x{w}" for h, w in TINY_BUCKETS]


def test_each_request_runs_at_its_bucket_and_equals_a_solo_run(bucket_server):
    bodies = [{"prompt": PROMPT, "seed": seed, "steps": STEPS, "output": "latent", "height": h, "width": w}
              for seed in (1, 2) for h, w in TINY_BUCKETS]
    with ThreadPoolExecutor(len(bodies)) as pool:  # both buckets at once: each batches in its own loop
        answers = list(pool.map(lambda body: post(bucket_server["url"], body), bodies))
    for body, (status, raw, headers) in zip(bodies, answers):
        assert status == 200, raw
        trace = json.loads(headers["x-ddit-trace"])
        latent = torch.from_numpy(np.load(io.BytesIO(raw)))
        bucket = (body["height"], body["width"])
        assert trace["resolution"] == f"{bucket[0]}x{bucket[1]}"
        assert latent.shape == (1, 16, bucket[0] // 8, bucket[1] // 8)
        alone = solo_latent(bucket_server["folder"], bucket, body["seed"])
        assert trace["schedule"] == alone.trace.schedule
        assert (latent - alone.latent).abs().max() < 1e-5


def test_an_unknown_resolution_is_a_422_listing_the_buckets(bucket_server):
    status, raw, _ = post(bucket_server["url"], {"prompt": PROMPT, "height": 64, "width": 96, "output": "latent"})
    error = json.loads(raw)["error"]
    assert status == 422 and "no engines for 64x96" in error and "64x64, 48x96" in error
