"""A staged folder served with step caching for real (one local Ray instance): the server's --cache default,
a request's own "cache", and refusals; every answer equal to a solo `generate` with the same cache."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

from tests.serve.helpers import demo_staged_folder
from tests.serve.test_app import free_port, get, post

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")


@pytest.fixture(scope="module")
def staged_server():
    from ddit_export.serve.app import bind_app, deployment_options

    folder = demo_staged_folder()
    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(bind_app({"engine_dir": str(folder), "max_batch": 2, "default_cache": "teacache:0.25"},
                           deployment_options(replicas=1, max_batch=2, num_cpus=0.5)),
                  name="ddit", route_prefix="/")
        yield {"url": f"http://127.0.0.1:{port}", "folder": folder}
    finally:
        serve.shutdown()
        ray.shutdown()


def solo_latent(folder, cache: str | None, prompt: str, seed: int, steps: int):
    from ddit_export.pipelines import generate, make_conditioning
    from ddit_export.runtime.backends import get_backend
    from ddit_export.runtime.cache import StepCache, parse_cache
    from ddit_export.runtime.runner import schedule_config

    with get_backend("onnx", folder) as backend:
        step_cache = StepCache(backend, parse_cache(cache)) if cache else None
        return generate(backend, make_conditioning(backend.manifest, prompt), schedule_config(backend),
                        steps=steps, seed=seed, cache=step_cache)


@pytest.mark.parametrize("field, expected_cache",
                         [(None, "teacache:0.25"), ("none", None), ("teacache:0.1", "teacache:0.1")])
def test_answers_equal_solo_runs_with_the_same_cache(staged_server, field, expected_cache):
    body = {"prompt": "white checkered circle", "seed": 5, "steps": 20, "output": "latent"}
    if field is not None:
        body["cache"] = field
    status, raw, headers = post(staged_server["url"], body)
    assert status == 200, raw
    trace = json.loads(headers["x-ddit-trace"])
    alone = solo_latent(staged_server["folder"], expected_cache, "white checkered circle", 5, 20)
    assert trace["cache"] == expected_cache and trace["schedule"] == alone.trace.schedule
    assert trace["cached_steps"] == sum(alone.trace.cached)
    assert (trace["cached_steps"] > 0) == (expected_cache is not None)
    assert torch.equal(torch.from_numpy(np.load(io.BytesIO(raw))), alone.latent.float())


def test_a_cache_these_engines_cannot_run_is_422(staged_server):
    status, raw, _ = post(staged_server["url"], {"prompt": "red circle", "cache": "fbcache:0.1"})
    error = json.loads(raw)
    assert status == 422 and "split after block 0" in error["error"] and "\n" not in error["error"]
    assert get(staged_server["url"], "/healthz")["batches"] == [1]  # staged: lock-step on batch-1 calls
