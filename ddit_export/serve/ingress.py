"""The HTTP front of the application: routes, body size, retries on a live replica, draining.

    HTTP -> DDiTIngress (one light replica, no engines) --handle--> DDiTServer replicas (engines, batching)

Why a front apart from the replicas: a replica that dies mid-request (its process killed, its node lost)
takes its HTTP handler with it, and Ray's proxy answers a bare 500. Here the request lives in the
ingress, which sends it again to a live replica (`MAX_ATTEMPTS` in all): a request is a pure function of
its body (seeded noise, its own schedule), so the second run answers exactly what the first would have.

Draining (`ddit-export serve` on SIGTERM or Ctrl-C, serve_cmd.py): `drain()` makes every later request a
503 with `Retry-After` (and `/healthz` a 503, so a readiness probe takes the server out of rotation);
the requests already in the ingress run to the end; `in_flight()` tells the command when they have.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field

from ray import serve
from ray.exceptions import RayActorError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .requests import MAX_BODY_BYTES, RequestError

MAX_ATTEMPTS = 3  # a request meets at most two dying replicas before it is answered 503
RETRY_PAUSE_S = 0.2  # lets Ray's router mark the dead replica before the next try


@dataclass
class Answer:
    """An HTTP answer made in a replica, sent back through the ingress (picklable, unlike a Response)."""
    status: int
    body: bytes
    media_type: str = "application/json"
    headers: dict = field(default_factory=dict)


@serve.deployment(name="DDiTIngress", num_replicas=1, max_ongoing_requests=1024, ray_actor_options={"num_cpus": 0})
class DDiTIngress:
    def __init__(self, server):
        from .metrics import ServeMetrics

        self.server = server  # DeploymentHandle of DDiTServer
        self.draining = False
        self._in_flight = 0
        self.retried = 0
        self.metrics = ServeMetrics()

    async def __call__(self, request: Request) -> Response:
        path = request.url.path.rstrip("/") or "/"
        if path == "/healthz" and request.method == "GET":
            return await self.health()
        if path != "/v1/generate":
            return _error(RequestError(f"no route {request.method} {request.url.path}; use POST /v1/generate or "
                                       "GET /healthz", 404))
        if request.method != "POST":
            return _error(RequestError("use POST for /v1/generate", 405))
        if self.draining:
            return _draining()
        self._in_flight += 1
        try:
            raw = await _read_body(request)
            if raw is None:
                self.metrics.refused("oversize")
                self.metrics.refused("http_413")
                self.metrics.answered(413)
                return _error(RequestError(f"request body is over the limit of {MAX_BODY_BYTES} bytes", 413))
            answer = await self._call("generate", raw)
            return Response(answer.body, status_code=answer.status, media_type=answer.media_type,
                            headers=answer.headers)
        except RayActorError as err:  # every attempt met a dying replica
            return _error(RequestError(f"no live replica answered after {MAX_ATTEMPTS} attempts "
                                       f"({type(err).__name__}); retry later", 503))
        finally:
            self._in_flight -= 1

    async def health(self) -> Response:
        if self.draining:
            return _draining()
        try:
            health = await self._call("health")
        except RayActorError as err:
            return _error(RequestError(f"no live replica answered ({type(err).__name__})", 503))
        return JSONResponse({**health, "ingress_pid": os.getpid(), "retried": self.retried})

    async def _call(self, method: str, *args):
        """`DDiTServer.<method>(*args)` on a live replica: a replica that dies before answering is tried again
        elsewhere (Ray's router drops the dead one, or waits for its replacement)."""
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                return await getattr(self.server, method).remote(*args)
            except RayActorError:
                if attempt == MAX_ATTEMPTS:
                    raise
                self.retried += 1
                await asyncio.sleep(RETRY_PAUSE_S)

    # -- called by `ddit-export serve` through the application's handle ------------------------------
    def drain(self) -> int:
        """Refuse every later request (503); return the number still in flight."""
        self.draining = True
        return self._in_flight

    def in_flight(self) -> int:
        return self._in_flight


async def _read_body(request: Request) -> bytes | None:
    """The body, or None past MAX_BODY_BYTES (declared or streamed): an oversize body is never held whole."""
    try:
        declared = int(request.headers.get("content-length") or 0)
    except ValueError:
        declared = 0
    if declared > MAX_BODY_BYTES:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _draining() -> JSONResponse:
    err = RequestError("the server is shutting down; send the request to another instance", 503)
    return JSONResponse(err.to_json(), status_code=503, headers={"Retry-After": "1"})


def _error(err: RequestError) -> JSONResponse:
    return JSONResponse(err.to_json(), status_code=err.status)
