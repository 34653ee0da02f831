"""Serving with user LoRAs: interleaved requests with different LoRAs, each equal to its solo run.

First the sampling loop itself (ContinuousBatcher over BatchedRunner, no Ray), then the Ray Serve app over HTTP
with `--lora-dir` (one local Ray instance), on the demo engines in the staged layout.
"""

from __future__ import annotations

import io
import json
import threading

import numpy as np
import pytest
import torch

from tests.runtime.loras.helpers import peft_lora
from tests.serve.helpers import demo_staged_folder

STEPS = 10
PROMPTS = ("red circle", "white checkered circle")


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory):
    from ddit_export.artifacts.manifest import read_manifest

    model = read_manifest(demo_staged_folder()).model_id
    root = tmp_path_factory.mktemp("served_loras")
    peft_lora(root / "ink.safetensors", seed=11, model=model, std=0.05)
    peft_lora(root / "chalk.safetensors", seed=12, model=model, std=0.05, targets=["to_q", "to_k", "ff.net.2"])
    return root


def solo(folder, loras, prompt, seed):
    from ddit_export.pipelines import generate, make_conditioning
    from ddit_export.runtime.backends import get_backend
    from ddit_export.runtime.runner import schedule_config

    with get_backend("onnx", folder, loras=loras) as backend:
        return generate(backend, make_conditioning(backend.manifest, prompt), schedule_config(backend),
                        steps=STEPS, seed=seed)


def test_loop_never_mixes_lora_sets_and_each_answer_is_its_solo_run(lora_dir, torch_single_thread):
    from ddit_export.pipelines import make_conditioning
    from ddit_export.runtime.backends import get_backend
    from ddit_export.runtime.loras import LoraSpec
    from ddit_export.runtime.runner import schedule_config
    from ddit_export.serve.batched_runner import BatchedRunner, Job
    from ddit_export.serve.continuous import ContinuousBatcher

    folder = demo_staged_folder()
    sets = [(), (LoraSpec(lora_dir / "ink.safetensors", 0.8),),
            (LoraSpec(lora_dir / "chalk.safetensors", 1.0), LoraSpec(lora_dir / "ink.safetensors", -0.5))]
    backend = get_backend("onnx", folder)
    runner = BatchedRunner([backend])
    calls = []
    original = backend._infer
    backend._infer = lambda *a, **k: (calls.append(backend.loras), original(*a, **k))[1]  # spy: the set of each call
    batcher = ContinuousBatcher(runner, max_active=4)
    try:
        jobs = [Job(make_conditioning(backend.manifest, PROMPTS[i % 2]), schedule_config(backend), STEPS, seed=i,
                    loras=sets[i % 3]) for i in range(6)]  # interleaved: ink, chalk+ink, none, ink, ...
        futures = [batcher.submit(job) for job in jobs]
        results = [f.result(timeout=600) for f in futures]
    finally:
        batcher.close()
        backend.close()
    assert {tuple(c) for c in calls} == set(sets), "every set ran"
    swaps = sum(1 for a, b in zip(calls, calls[1:]) if a != b)
    assert swaps <= 5, f"LoRA sets are swapped between batches, not per step ({swaps} swaps)"
    for i, result in enumerate(results):
        alone = solo(folder, sets[i % 3], PROMPTS[i % 2], i)
        assert result.trace.schedule == alone.trace.schedule
        assert torch.equal(result.latent, alone.latent), f"request {i} differs from its solo run"
    assert not torch.equal(results[1].latent, solo(folder, (), PROMPTS[1], 1).latent), "the LoRA changes the image"


ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")


@pytest.fixture(scope="module")
def lora_server(lora_dir):
    from ddit_export.serve.app import bind_app, deployment_options
    from tests.serve.test_app import free_port

    folder = demo_staged_folder()
    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(bind_app({"engine_dir": str(folder), "max_batch": 2, "batch_wait_ms": 200,
                            "lora_dir": str(lora_dir)}, deployment_options(replicas=1, max_batch=2, num_cpus=0.5)),
                  name="ddit", route_prefix="/")
        yield {"url": f"http://127.0.0.1:{port}", "folder": folder}
    finally:
        serve.shutdown()
        ray.shutdown()


def test_two_interleaved_clients_with_different_loras_get_their_solo_answers(lora_server, lora_dir):
    from tests.serve.test_app import post

    clients = {"ink": [{"name": "ink", "scale": 0.8}], "chalk": [{"name": "chalk", "scale": 1.0}]}
    answers: dict = {}

    def client(name):
        for seed in (1, 2):  # each client sends its next request when the last one is answered: interleaved
            body = {"prompt": PROMPTS[0], "seed": seed, "steps": STEPS, "output": "latent", "loras": clients[name]}
            answers[name, seed] = post(lora_server["url"], body, timeout=300)

    threads = [threading.Thread(target=client, args=(n,)) for n in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for (name, seed), (status, raw, headers) in answers.items():
        assert status == 200, raw
        trace = json.loads(headers["x-ddit-trace"])
        assert trace["loras"] == clients[name]
        spec = [(lora_dir / f"{name}.safetensors", clients[name][0]["scale"])]
        alone = solo(lora_server["folder"], spec, PROMPTS[0], seed)
        assert trace["schedule"] == alone.trace.schedule
        assert torch.equal(torch.from_numpy(np.load(io.BytesIO(raw))), alone.latent.float()), (name, seed)
    assert not np.array_equal(np.load(io.BytesIO(answers["ink", 1][1])), np.load(io.BytesIO(answers["chalk", 1][1])))


def test_a_lora_request_the_server_cannot_run_is_422(lora_server, tmp_path):
    from tests.serve.test_app import post

    for loras, naming in (([{"name": "nope"}], "unknown LoRA 'nope'"), ([{"name": "ink", "scale": 99}], "'scale'")):
        status, raw, _ = post(lora_server["url"], {"prompt": PROMPTS[0], "loras": loras})
        error = json.loads(raw)["error"]
        assert status == 422 and naming in error and "\n" not in error, error
