"""Requests join a running lock-step loop at the next step instead of waiting for the current batch to end.

    loop = ContinuousBatcher(BatchedRunner(backends), max_active=8)
    future = loop.submit(job)          # concurrent.futures.Future -> JobResult
    loop.close()

One thread steps every active request (`BatchedRunner.step`); between steps it admits waiting jobs,
at most `max_active` at a time. Requests at different steps share an engine call whenever they chose
the same patch size: each row carries its own timestep, so nothing about a request changes (its
schedule and latent are the solo ones; tests/serve/test_batched_runner.py).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from concurrent.futures import Future

from .batched_runner import ActiveRequest, BatchedRunner, Job


class ContinuousBatcher:
    def __init__(self, runner: BatchedRunner, max_active: int):
        if max_active < 1:
            raise ValueError(f"max_active must be at least 1 (got {max_active})")
        self.runner = runner
        self.max_active = max_active
        self._pending: deque[tuple[Job, Future]] = deque()
        self._active: dict[int, ActiveRequest] = {}
        self._futures: dict[int, Future] = {}
        self._ids = itertools.count()
        self._wake = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="ddit-continuous-batching", daemon=True)
        self._thread.start()

    @property
    def active(self) -> int:
        return len(self._active)

    def submit(self, job: Job) -> Future:
        future: Future = Future()
        with self._wake:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            self._pending.append((job, future))
            self._wake.notify()
        return future

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join(timeout=60)

    def _admit(self) -> None:
        # Requests with other LoRAs than the running ones wait until those finish (first come, first served:
        # a later request never overtakes a waiting one), so the engines swap LoRAs between batches, not per step.
        running = {tuple(s.job.loras) for s in self._active.values()}
        while self._pending and len(self._active) < self.max_active:
            if running and tuple(self._pending[0][0].loras) not in running:
                break
            job, future = self._pending.popleft()
            running.add(tuple(job.loras))
            if not future.set_running_or_notify_cancel():
                continue
            try:
                state = ActiveRequest(job, self.runner.solo, time.perf_counter(), self.runner.sampling)
            except Exception as err:  # that request alone fails
                future.set_exception(err)
                continue
            key = next(self._ids)
            self._active[key], self._futures[key] = state, future

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._closed and not self._pending and not self._active:
                    self._wake.wait()
                if self._closed:
                    for future in [*self._futures.values(), *(f for _, f in self._pending)]:
                        future.cancel() or future.set_exception(RuntimeError("the batcher was closed"))
                    return
                self._admit()
            try:
                done = self.runner.step(self._active)
            except Exception as err:  # an engine call failed: every request in this loop fails with it
                for key in list(self._active):
                    self._futures.pop(key).set_exception(err)
                self._active.clear()
                continue
            for key, result in done.items():
                self._futures.pop(key).set_result(result)
