"""Per-step record of a DDiT run: patch size, scheduler statistics and where the time went.

Timing must not add host synchronisations to the hot path. On CUDA the clock records CUDA events
(from a pool reused across runs) and only reads them when the trace is resolved, after the run;
on the CPU it reads `time.perf_counter`. A step's ``seconds`` run from the start of its
scheduler call to the start of the next step's (so they include the sampler update and any
caller overhead), and to the trace's end mark for the last step.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch

from .scheduler import Decision


class HostClock:
    """Wall-clock marks; exact when the work being timed is synchronous (CPU)."""

    def mark(self) -> float:
        return time.perf_counter()

    @staticmethod
    def seconds(start: float, end: float) -> float:
        return end - start

    def recycle(self) -> None:
        pass


class CudaClock:
    """CUDA event marks on the current stream: no host sync until `seconds` is asked."""

    def __init__(self, device: torch.device):
        self.device = device
        self._pool: list[torch.cuda.Event] = []
        self._used = 0

    def mark(self) -> torch.cuda.Event:
        if self._used == len(self._pool):
            self._pool.append(torch.cuda.Event(enable_timing=True))
        event = self._pool[self._used]
        self._used += 1
        event.record(torch.cuda.current_stream(self.device))
        return event

    @staticmethod
    def seconds(start: torch.cuda.Event, end: torch.cuda.Event) -> float:
        end.synchronize()
        return start.elapsed_time(end) / 1000.0

    def recycle(self) -> None:
        """Every mark handed out so far has been read: reuse the events."""
        self._used = 0


def clock_for(device: torch.device) -> HostClock | CudaClock:
    device = torch.device(device)
    return CudaClock(device) if device.type == "cuda" else HostClock()


@dataclass(frozen=True)
class StepRecord:
    """One denoising step. ``stats`` is None during warm-up and static runs."""

    step: int
    patch_size: int
    stats: dict[int, float] | None
    seconds: float
    scheduler_seconds: float
    engine_seconds: float
    engine_calls: int  # 2 with classifier-free guidance: both passes share the step's decision
    cached: bool = False  # every call of the step was served from the step cache (runtime/cache/)
    cached_calls: int = 0

    def to_json(self) -> dict:
        data = asdict(self)
        if self.stats is not None:
            # JSON object keys are strings; a non-finite statistic (NaN latent) becomes null.
            data["stats"] = {str(p): (v if math.isfinite(v) else None) for p, v in self.stats.items()}
        return data


class Trace:
    """Steps of one trajectory. The runner feeds raw marks; reading resolves them once."""

    def __init__(self, clock: HostClock | CudaClock | None = None):
        self.clock = clock or HostClock()
        self._raw: list[list] = []  # [step, decision, start, decided, [(engine start, end, cached), ...]]
        self._end = None
        self._steps: list[StepRecord] | None = None

    # -- hot path (runner) --------------------------------------------------------------------------
    def open_step(self, step: int, decision: Decision, start, decided) -> None:
        self._raw.append([step, decision, start, decided, []])

    def add_engine_call(self, start, end, cached: bool = False) -> None:
        if not self._raw:
            raise RuntimeError("an engine call was recorded before any scheduler decision")
        self._raw[-1][4].append((start, end, cached))

    def finish(self, end=None) -> None:
        """Mark the end of the last step (e.g. after the final sampler update)."""
        self._end = end if end is not None else self.clock.mark()
        self._steps = None  # the last step's length changes

    # -- reading ------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._raw)

    @property
    def steps(self) -> list[StepRecord]:
        if self._steps is None or len(self._steps) != len(self._raw):
            self._steps = self._resolve()
        return self._steps

    @property
    def schedule(self) -> list[int]:
        """Patch size of every step (no timing needed, so no sync)."""
        return [raw[1].patch_size for raw in self._raw]

    @property
    def cached(self) -> list[bool]:
        """Per step: served from the step cache (every call of it), no timing needed."""
        return [bool(raw[4]) and all(c[2] for c in raw[4]) for raw in self._raw]

    def totals(self) -> dict[str, float]:
        steps = self.steps
        total = sum(s.seconds for s in steps)
        scheduler = sum(s.scheduler_seconds for s in steps)
        engine = sum(s.engine_seconds for s in steps)
        return {"seconds": total, "scheduler_seconds": scheduler, "engine_seconds": engine,
                "rest_seconds": total - scheduler - engine}

    def to_json(self) -> dict:
        return {"steps": [s.to_json() for s in self.steps], "schedule": self.schedule, "cached": self.cached,
                "totals": self.totals()}

    def _resolve(self) -> list[StepRecord]:
        clock, records = self.clock, []
        for i, (step, decision, start, decided, calls) in enumerate(self._raw):
            if i + 1 < len(self._raw):
                end = self._raw[i + 1][2]
            else:
                end = self._end if self._end is not None else (calls[-1][1] if calls else decided)
            cached_calls = sum(1 for c in calls if c[2])
            records.append(StepRecord(
                step=step,
                patch_size=decision.patch_size,
                stats=dict(decision.stats) if decision.stats is not None else None,
                seconds=clock.seconds(start, end),
                scheduler_seconds=clock.seconds(start, decided),
                engine_seconds=sum(clock.seconds(a, b) for a, b, _ in calls),
                engine_calls=len(calls),
                cached=bool(calls) and cached_calls == len(calls),
                cached_calls=cached_calls,
            ))
        return records
