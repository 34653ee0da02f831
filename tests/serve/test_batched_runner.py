"""`BatchedRunner` without Ray: lock-step requests keep their solo schedules and latents, bit for bit."""

from __future__ import annotations

import pytest
import torch

from ddit_export.pipelines import generate, make_conditioning
from ddit_export.runtime.backends import get_backend
from ddit_export.runtime.runner import schedule_config
from ddit_export.runtime.schedule_spec import parse_schedule
from ddit_export.serve.batched_runner import BatchedRunner, Job
from tests.serve.helpers import VARIANT_BATCH, demo_engine_folders


@pytest.fixture(scope="module")
def backends(torch_single_thread_module):
    solo_dir, batch_dir = demo_engine_folders()
    solo, batched = get_backend("onnx", solo_dir), get_backend("onnx", batch_dir)
    yield solo, batched
    solo.close()
    batched.close()


@pytest.fixture(scope="module")
def torch_single_thread_module():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def jobs_for(solo) -> list[Job]:
    """Five requests that diverge: three classes, three seeds, a tuned dynamic rule, a looser tau, a fixed
    schedule and a different step count, so groups form, split and shrink as requests change size or finish."""
    cond = {c: make_conditioning(solo.manifest, c) for c in ("red circle", "white checkered circle", "cyan ring")}
    dynamic = schedule_config(solo)
    return [
        Job(cond["red circle"], dynamic, steps=12, seed=1),
        Job(cond["white checkered circle"], dynamic, steps=12, seed=2),
        Job(cond["cyan ring"], schedule_config(solo, tau=0.05), steps=12, seed=3),
        Job(cond["red circle"], schedule_config(solo, schedule=parse_schedule("8x4,4x4,2x2")), steps=10, seed=4),
        Job(cond["cyan ring"], dynamic, steps=9, seed=5),
    ]


def test_lock_step_equals_solo_runs(backends):
    solo, batched = backends
    runner = BatchedRunner([batched, solo])
    assert runner.batches == (1, VARIANT_BATCH)
    jobs = jobs_for(solo)
    results = runner.run(jobs)
    shared = 0
    for job, result in zip(jobs, results):
        alone = generate(solo, job.conditioning, job.config, steps=job.steps, seed=job.seed)
        assert result.trace.schedule == alone.trace.schedule
        assert torch.equal(result.latent, alone.latent)  # bitwise: rows of the demo's engines are independent
        assert len(result.batch_sizes) == job.steps
        shared += sum(n > 1 for n in result.batch_sizes)
    assert shared > 0  # engine calls were really shared
    assert max(max(r.batch_sizes) for r in results) <= VARIANT_BATCH  # a group never exceeds the largest batch
    schedules = {tuple(r.trace.schedule) for r in results}
    assert len(schedules) > 1  # the requests did not share one schedule


def test_group_split_and_padding(backends):
    solo, batched = backends
    runner = BatchedRunner([solo, batched])
    assert [runner.call_batch(n) for n in (1, 2, 3, 4, 5)] == [1, 4, 4, 4, 4]
    cond = make_conditioning(solo.manifest, "green square")
    fixed = schedule_config(solo, schedule=parse_schedule("8x3,2x2"))
    jobs = [Job(cond, fixed, steps=5, seed=s) for s in range(6)]  # 6 at one size: one call of 4, one of 2 padded
    results = runner.run(jobs)
    assert sorted(r.batch_sizes for r in results) == [[2] * 5] * 2 + [[4] * 5] * 4
    for job, result in zip(jobs, results):
        alone = generate(solo, job.conditioning, job.config, steps=job.steps, seed=job.seed)
        assert torch.equal(result.latent, alone.latent)


def test_bad_job_fails_alone_and_bad_engine_sets_refused(backends):
    solo, batched = backends
    runner = BatchedRunner([solo])
    cond = make_conditioning(solo.manifest, "green square")
    good = Job(cond, schedule_config(solo), steps=4, seed=0)
    results = runner.run([good, Job(cond, schedule_config(solo), steps=0, seed=0)])
    assert isinstance(results[1], ValueError) and "steps" in str(results[1])
    assert torch.equal(results[0].latent, generate(solo, cond, good.config, steps=4, seed=0).latent)
    with pytest.raises(ValueError, match="batch-1 engines"):
        BatchedRunner([batched])


def test_requests_joining_a_running_loop_keep_their_solo_results(backends):
    """A request admitted at another request's step 3 shares its engine calls (rows at different timesteps)."""
    from ddit_export.serve.batched_runner import ActiveRequest

    solo, batched = backends
    runner = BatchedRunner([solo, batched])
    fixed = schedule_config(solo, schedule=parse_schedule("8x6,2x2"))
    first = Job(make_conditioning(solo.manifest, "red circle"), fixed, steps=8, seed=21)
    later = Job(make_conditioning(solo.manifest, "lime hatched diamond"), fixed, steps=8, seed=22)
    active, results = {"first": ActiveRequest(first, solo, 0.0)}, {}
    for _ in range(3):
        results.update(runner.step(active))
    active["later"] = ActiveRequest(later, solo, 0.0)
    while active:
        results.update(runner.step(active))
    assert results["first"].batch_sizes == [1, 1, 1, 2, 2, 2, 1, 1]  # steps 3-5 at p8 with the newcomer's 0-2
    for key, job in (("first", first), ("later", later)):
        alone = generate(solo, job.conditioning, job.config, steps=job.steps, seed=job.seed)
        assert torch.equal(results[key].latent, alone.latent)


def test_continuous_batcher_admits_up_to_max_active(backends):
    from ddit_export.serve.continuous import ContinuousBatcher

    solo, batched = backends
    batcher = ContinuousBatcher(BatchedRunner([solo, batched]), max_active=2)
    try:
        cond = make_conditioning(solo.manifest, "yellow cross")
        jobs = [Job(cond, schedule_config(solo), steps=6, seed=30 + i) for i in range(3)]
        futures = [batcher.submit(job) for job in jobs]
        bad = batcher.submit(Job(cond, schedule_config(solo), steps=0, seed=0))
        results = [f.result(timeout=120) for f in futures]
        with pytest.raises(ValueError, match="steps"):
            bad.result(timeout=120)
    finally:
        batcher.close()
    assert max(max(r.batch_sizes) for r in results) <= 2  # never more than max_active sampling together
    for job, result in zip(jobs, results):
        alone = generate(solo, job.conditioning, job.config, steps=job.steps, seed=job.seed)
        assert torch.equal(result.latent, alone.latent) and result.trace.schedule == alone.trace.schedule


def test_groups_split_by_measured_call_time(backends):
    solo, batched = backends
    runner = BatchedRunner([solo, batched])
    measured = runner.calibrate(repeats=1)
    assert sorted(measured) == [(b, p) for b in (1, VARIANT_BATCH) for p in (2, 4, 8)]
    assert all(t > 0 for t in measured.values())
    # a batched call dearer than four single ones -> single calls; cheaper -> one padded call
    runner.call_seconds = {(1, 2): 1.0, (VARIANT_BATCH, 2): 5.0, (1, 8): 1.0, (VARIANT_BATCH, 8): 1.5}
    assert [runner.call_batch(n, 2) for n in (1, 3, 4)] == [1, 1, 1]
    assert [runner.call_batch(n, 8) for n in (1, 2, 3, 4, 6)] == [1, 2, 3, 4, 4]
    cond = make_conditioning(solo.manifest, "magenta diamond")
    fixed = schedule_config(solo, schedule=parse_schedule("8x3,2x3"))
    jobs = [Job(cond, fixed, steps=6, seed=40 + i) for i in range(3)]
    results = runner.run(jobs)
    assert all(r.batch_sizes == [3, 3, 3, 1, 1, 1] for r in results)  # p8 shared, p2 one by one
    for job, result in zip(jobs, results):
        assert torch.equal(result.latent, generate(solo, job.conditioning, job.config, steps=6, seed=job.seed).latent)


def test_step_cached_requests_on_a_staged_folder_keep_their_solo_results(torch_single_thread_module):
    """TeaCache requests run alone through their own cache; uncached ones in the same loop still share calls."""
    from ddit_export.runtime.cache import StepCache, parse_cache
    from tests.serve.helpers import demo_staged_folder

    with get_backend("onnx", demo_staged_folder()) as staged:
        runner = BatchedRunner([staged])
        tea = parse_cache("teacache:0.25")
        cond = {c: make_conditioning(staged.manifest, c) for c in ("red circle", "white checkered circle")}
        jobs = [Job(cond["red circle"], schedule_config(staged), steps=16, seed=1, cache=tea),
                Job(cond["white checkered circle"], schedule_config(staged), steps=16, seed=2, cache=tea),
                Job(cond["red circle"], schedule_config(staged), steps=16, seed=3),
                Job(cond["red circle"], schedule_config(staged), steps=12, seed=4)]
        results = runner.run(jobs)
        for job, result in zip(jobs, results):
            cache = StepCache(staged, job.cache) if job.cache else None
            alone = generate(staged, job.conditioning, job.config, steps=job.steps, seed=job.seed, cache=cache)
            assert result.trace.schedule == alone.trace.schedule and result.trace.cached == alone.trace.cached
            assert torch.equal(result.latent, alone.latent)
        assert all(sum(r.trace.cached) > 0 for r in results[:2])  # the cache really served steps
        assert not any(any(r.trace.cached) for r in results[2:])
        assert all(n == 1 for r in results[:2] for n in r.batch_sizes)  # a cached request never shares a call
