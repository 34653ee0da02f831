"""Load test of a running deployment over loopback: N requests from C concurrent clients, bounded in time.

Reports throughput, p50/p95/p99 latency and errors by status, and checks every answered request
against a solo run of the same request on the local engines (`pipelines.generate`: same seed, same
schedule settings): the schedule must be identical and the latent equal (bitwise by default).
Solo runs happen after the load, so they never compete with the server for the CPU.

`--kill-replica-after K` sends SIGKILL to the process of the replica that answers `/healthz` once K
responses have arrived (same machine only): the fault-handling check. The ingress sends the requests it
was sampling again to a live replica (serve/ingress.py), so a clean run has 0 errors and every answer
equal to its solo run; nothing may hang (every request has a timeout, the whole run a deadline).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

DEFAULT_PROMPTS = ("red circle", "green square", "blue triangle", "yellow cross", "magenta diamond", "cyan ring",
                   "orange striped square", "white checkered circle", "lime hatched diamond")


@dataclass
class Outcome:
    index: int
    body: dict
    status: int  # HTTP status; 0 = no answer (connection error or timeout)
    seconds: float
    error: str | None = None
    trace: dict | None = None
    latent: object = None  # numpy array for output "latent"


@dataclass
class Report:
    requests: int
    concurrency: int
    wall_seconds: float
    outcomes: list[Outcome] = field(default_factory=list)
    killed_pid: int | None = None
    verification: dict | None = None

    def summary(self) -> dict:
        ok = [o for o in self.outcomes if o.status == 200]
        latencies = sorted(o.seconds for o in ok)
        statuses: dict[str, int] = {}
        for o in self.outcomes:
            statuses[str(o.status)] = statuses.get(str(o.status), 0) + 1
        return {
            "requests": self.requests, "sent": len(self.outcomes), "concurrency": self.concurrency,
            "ok": len(ok), "errors": len(self.outcomes) - len(ok), "statuses": statuses,
            "not_sent": self.requests - len(self.outcomes),
            "wall_seconds": round(self.wall_seconds, 3),
            "throughput_rps": round(len(ok) / self.wall_seconds, 3) if self.wall_seconds else 0.0,
            "latency_seconds": {f"p{q}": round(_percentile(latencies, q), 4) for q in (50, 95, 99)}
            if latencies else {},
            "mean_requests_per_engine_call": round(
                sum(sum(o.trace["batch_sizes"]) for o in ok if o.trace) /
                max(1, sum(len(o.trace["batch_sizes"]) for o in ok if o.trace)), 3),
            "error_examples": sorted({f"{o.status}: {o.error}" for o in self.outcomes if o.error})[:5],
            "killed_replica_pid": self.killed_pid,
            "verification": self.verification,
        }


def _percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if len(values) == 1:
        return values[0]
    pos = (len(values) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (pos - low)


def _post(url: str, body: dict, timeout: float) -> tuple[int, bytes, dict, str | None]:
    data = json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read(), dict(resp.headers), None
    except urllib.error.HTTPError as err:
        payload = err.read()
        try:
            message = json.loads(payload).get("error")
        except (ValueError, AttributeError):
            message = payload[:200].decode("utf-8", "replace")
        return err.code, payload, dict(err.headers), message or str(err)
    except (urllib.error.URLError, OSError, TimeoutError) as err:
        return 0, b"", {}, f"no answer: {getattr(err, 'reason', err)}"


def health(url: str, timeout: float = 10.0) -> dict:
    with urllib.request.urlopen(f"{url}/healthz", timeout=timeout) as resp:
        return json.loads(resp.read())


def run_load(url: str, bodies: list[dict], concurrency: int, time_limit: float, timeout: float,
             kill_after: int | None = None) -> Report:
    """Send `bodies` from `concurrency` closed-loop clients; stop sending at `time_limit` seconds."""
    import numpy as np

    url = url.rstrip("/")
    report = Report(len(bodies), concurrency, 0.0)
    lock = threading.Lock()
    answered = [0]
    next_index = [0]
    start = time.perf_counter()
    deadline = start + time_limit

    def maybe_kill() -> None:
        if kill_after is None or report.killed_pid is not None or answered[0] < kill_after:
            return
        try:
            pid = int(health(url)["pid"])
        except (OSError, ValueError, KeyError):
            return
        report.killed_pid = pid
        os.kill(pid, signal.SIGKILL)

    def client() -> None:
        while True:
            with lock:
                i = next_index[0]
                if i >= len(bodies) or time.perf_counter() >= deadline:
                    return
                next_index[0] += 1
            sent = time.perf_counter()
            left = max(1.0, min(timeout, deadline + timeout - sent))
            status, payload, headers, error = _post(f"{url}/v1/generate", bodies[i], left)
            outcome = Outcome(i, bodies[i], status, time.perf_counter() - sent, error)
            if status == 200:
                trace = headers.get("x-ddit-trace") or headers.get("X-DDiT-Trace")
                outcome.trace = json.loads(trace) if trace else None
                if bodies[i].get("output") == "latent":
                    outcome.latent = np.load(io.BytesIO(payload))
            with lock:
                report.outcomes.append(outcome)
                answered[0] += 1
                should_kill = kill_after is not None and report.killed_pid is None and answered[0] >= kill_after
                if should_kill:
                    maybe_kill()

    with ThreadPoolExecutor(concurrency) as pool:
        for _ in range(concurrency):
            pool.submit(client)
    report.wall_seconds = time.perf_counter() - start
    report.outcomes.sort(key=lambda o: o.index)
    return report


def verify(report: Report, engine_dir: str, backend: str = "onnx", atol: float = 0.0) -> dict:
    """Solo run of each answered request on the local engines: schedule identical, latent equal within `atol`."""
    import numpy as np
    import torch

    from ..pipelines import generate, make_conditioning
    from ..runtime.backends import get_backend
    from ..runtime.cache import StepCache, parse_cache
    from ..runtime.runner import schedule_config
    from ..runtime.schedule_spec import parse_schedule

    checked = equal = schedule_mismatch = 0
    max_diff = 0.0
    mismatches = []
    with get_backend(backend, engine_dir) as solo:
        conds: dict = {}
        for o in report.outcomes:
            if o.status != 200 or o.latent is None:
                continue
            b = o.body
            key = (b["prompt"], b.get("guidance"))
            if key not in conds:
                conds[key] = make_conditioning(solo.manifest, b["prompt"], b.get("guidance"))
            schedule = parse_schedule(b["schedule"]) if b.get("schedule") else None
            config = schedule_config(solo, tau=b.get("tau"), rho=b.get("rho"), schedule=schedule,
                                     patch_sizes=tuple(b["sizes"]) if b.get("sizes") else None)
            # the cache the server used (the request's or the server's --cache), from the answer's trace
            spec = parse_cache(o.trace.get("cache")) if o.trace else None
            cache = StepCache(solo, spec) if spec is not None else None
            result = generate(solo, conds[key], config, steps=b["steps"], seed=b["seed"], cache=cache)
            expected = result.latent.float().cpu().numpy()
            diff = float(np.abs(expected - o.latent).max()) if expected.shape == o.latent.shape else float("inf")
            same_schedule = o.trace is not None and o.trace["schedule"] == result.trace.schedule
            checked += 1
            max_diff = max(max_diff, diff)
            schedule_mismatch += not same_schedule
            ok = same_schedule and (diff <= atol if atol else bool(np.array_equal(expected, o.latent)))
            equal += ok
            if not ok and len(mismatches) < 5:
                mismatches.append({"index": o.index, "max_abs_diff": diff, "schedule_same": same_schedule})
    _ = torch  # imported for generate's tensors
    return {"checked": checked, "equal": equal, "bitwise": atol == 0.0, "atol": atol, "max_abs_diff": max_diff,
            "schedule_mismatches": schedule_mismatch, "mismatches": mismatches}


def build_bodies(n: int, steps: int, seed: int, prompts: list[str], cache: str | None = None) -> list[dict]:
    extra = {"cache": cache} if cache else {}
    return [{"prompt": prompts[i % len(prompts)], "seed": seed + i, "steps": steps, "output": "latent", **extra}
            for i in range(n)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="load_test", description=__doc__.splitlines()[0])
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the deployment (loopback)")
    p.add_argument("--engines", help="the served batch-1 engine folder, for the solo-run check (omit to skip it)")
    p.add_argument("--backend", default="onnx", help="backend of the solo runs (default onnx)")
    p.add_argument("--requests", "-n", type=int, default=200)
    p.add_argument("--concurrency", "-c", type=int, default=8)
    p.add_argument("--steps", type=int, default=28)
    p.add_argument("--seed", type=int, default=1000, help="seed of the first request (request i: seed + i)")
    p.add_argument("--prompts", default=",".join(DEFAULT_PROMPTS), help="comma-separated prompts, used in turn")
    p.add_argument("--cache", help="each request's \"cache\" (teacache:T, fbcache:T, none; default: the server's)")
    p.add_argument("--time-limit", type=float, default=600, help="stop sending after this many seconds")
    p.add_argument("--timeout", type=float, default=120, help="per-request timeout, seconds")
    p.add_argument("--atol", type=float, default=0.0, help="latent tolerance (default 0: bitwise)")
    p.add_argument("--kill-replica-after", type=int, metavar="K", help="SIGKILL the /healthz replica after K answers")
    p.add_argument("--json", help="write the summary here")
    args = p.parse_args(argv)
    for name in ("requests", "concurrency", "steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    if not args.url.startswith(("http://127.", "http://localhost", "http://[::1]")):
        p.error(f"--url must be a loopback address (got {args.url})")
    try:
        health(args.url.rstrip("/"))
    except OSError as err:
        print(f"load_test: error: no deployment answers {args.url}/healthz ({err}); start `ddit-export serve`",
              file=sys.stderr)
        return 2
    bodies = build_bodies(args.requests, args.steps, args.seed, [s.strip() for s in args.prompts.split(",")],
                          args.cache)
    report = run_load(args.url, bodies, args.concurrency, args.time_limit, args.timeout, args.kill_replica_after)
    if args.engines:
        report.verification = verify(report, args.engines, args.backend, args.atol)
    summary = report.summary()
    text = json.dumps(summary, indent=1)
    print(text)
    if args.json:
        from ..util.atomic import write_text_atomic

        write_text_atomic(args.json, text + "\n")
    v = report.verification
    clean = summary["errors"] == 0 and summary["not_sent"] == 0 and (v is None or v["equal"] == v["checked"])
    return 0 if clean else 1
