"""Prometheus metrics of a replica, through Ray Serve's metrics API (exported by Ray's metrics agent).

Ray adds the `ray_` prefix and the deployment / replica / application tags; scrape each node's
metrics export port (`ddit-export serve --metrics-port`, docs/serving.md).
"""

from __future__ import annotations

LATENCY_BOUNDARIES = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300]


class ServeMetrics:
    def __init__(self):
        from ray.serve.metrics import Counter, Histogram

        self.requests = Counter("ddit_requests", "generate requests answered, by HTTP status",
                                tag_keys=("status",))
        self.errors = Counter("ddit_errors", "generate requests refused or failed, by kind", tag_keys=("kind",))
        self.latency = Histogram("ddit_request_latency_seconds", "generate latency in the replica (queue + sampling)",
                                 boundaries=LATENCY_BOUNDARIES)
        self.steps = Counter("ddit_steps", "denoising steps run, by patch size", tag_keys=("patch_size",))
        self.tokens_saved = Counter("ddit_tokens_saved", "image tokens not computed against running every step "
                                    "at the base patch size")
        self.batch = Histogram("ddit_batch_requests", "requests sampled together in one lock-step run",
                               boundaries=[1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64])

    def answered(self, status: int, seconds: float | None = None) -> None:
        self.requests.inc(tags={"status": str(status)})
        if seconds is not None:
            self.latency.observe(seconds)

    def refused(self, kind: str) -> None:
        self.errors.inc(tags={"kind": kind})

    def sampled(self, schedule: list[int], tokens: dict[int, int], base: int) -> None:
        for patch in set(schedule):
            self.steps.inc(schedule.count(patch), tags={"patch_size": str(patch)})
        saved = sum(tokens[base] - tokens[p] for p in schedule)
        if saved:
            self.tokens_saved.inc(saved)
