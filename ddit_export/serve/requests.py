"""`POST /v1/generate` bodies: parsed and checked before any work, each fault one clear 4xx message.

    {"prompt": "red circle" | "prompt_embeds_id": "ID", "seed": 0, "steps": 28,
     "tau": 0.003, "rho": 0.9, "sizes": [2, 4], "schedule": "8x14,2x14", "guidance": 3.5,
     "cache": "teacache:0.25" | "fbcache:0.05" | "none", "output": "png" | "latent",
     "height": 1024, "width": 1024,   (one of the folder's resolution buckets; both or neither: its default)
     "loras": [{"name": "style", "scale": 0.8}]}   (files of the server's --lora-dir; docs/loras.md)

Torch-free: the HTTP layer refuses bad bodies without touching the engines.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from ..runtime.schedule_spec import check_schedule, parse_schedule
from ..util import limits

MAX_BODY_BYTES = 64 * 1024  # a generate request is a few hundred bytes; anything larger is a mistake or abuse
DRAIN_TIMEOUT_S = 20.0  # a stopping server's requests finish within this (Kubernetes' grace period is 30 s)
MAX_SERVE_STEPS = 1000  # a request of more steps would hold a replica for minutes
OUTPUTS = ("png", "latent")
FIELDS = ("prompt", "prompt_embeds_id", "seed", "steps", "tau", "rho", "sizes", "schedule", "guidance", "cache",
          "output", "height", "width", "loras")
MAX_LORAS = 8  # LoRAs in one request
MAX_LORA_SCALE = 8.0  # |scale|: style LoRAs run at 0..1.5; far beyond is a typo
EMBEDS_ID = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


class RequestError(ValueError):
    """A request the server refuses; `status` is the HTTP code (4xx)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status

    def to_json(self) -> dict:
        return {"error": str(self), "status": self.status}


@dataclass(frozen=True)
class GenerateRequest:
    prompt: str | None
    prompt_embeds_id: str | None
    seed: int
    steps: int
    tau: float | None = None
    rho: float | None = None
    sizes: tuple[int, ...] | None = None
    schedule: tuple[int, ...] | None = None
    guidance: float | None = None
    cache: str | None = None  # "teacache:0.25", "none"; None: the server's --cache
    output: str = "png"
    height: int | None = None  # a resolution bucket of the folder; None: its default
    width: int | None = None
    loras: tuple[tuple[str, float], ...] = ()  # (name in --lora-dir, scale), in the order applied

    def to_json(self) -> dict:
        out = {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items() if v is not None}
        out["loras"] = [{"name": n, "scale": s} for n, s in self.loras]
        return out


def _int(body: dict, key: str, low: int, high: int, default: int | None = None) -> int:
    """The shared bound (util/limits.py) on a JSON integer: text, bools and fractions are refused as such."""
    value = body.get(key, default)
    if value is None:
        raise RequestError(f"'{key}' is required (an integer from {low} to {high})")
    if isinstance(value, str):
        raise RequestError(f"'{key}' must be an integer from {low} to {high} (got {value!r})")
    try:
        return limits.check_int(value, f"'{key}'", low, high)
    except ValueError as err:
        raise RequestError(str(err)) from None


def _float(body: dict, key: str, low: float, high: float | None, open_ends: bool = False) -> float | None:
    """The shared bound (util/limits.py) on a JSON number: finite, within [low, high] (or the open interval)."""
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, (str, bool)):
        raise RequestError(f"'{key}' must be a finite number (got {value!r})")
    try:
        return limits.check_float(value, f"'{key}'", low, high, low_open=open_ends, high_open=open_ends)
    except ValueError as err:
        raise RequestError(str(err)) from None


def parse_body(raw: bytes, engine_sizes: tuple[int, ...], default_steps: int) -> GenerateRequest:
    """The checked request, or RequestError (413 oversize, 400 malformed JSON, 422 a bad field)."""
    if len(raw) > MAX_BODY_BYTES:
        raise RequestError(f"request body is {len(raw)} bytes; the limit is {MAX_BODY_BYTES}", 413)
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RequestError(f"request body is not valid JSON ({err})") from None
    if not isinstance(body, dict):
        raise RequestError(f"request body must be a JSON object (got {type(body).__name__})")
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise RequestError(f"unknown field(s) {unknown}; known: {', '.join(FIELDS)}", 422)
    try:
        return _fields(body, engine_sizes, default_steps)
    except RequestError as err:
        raise RequestError(str(err), 422) from None


def _fields(body: dict, engine_sizes: tuple[int, ...], default_steps: int) -> GenerateRequest:
    prompt, embeds = body.get("prompt"), body.get("prompt_embeds_id")
    if (prompt is None) == (embeds is None):
        raise RequestError("give exactly one of 'prompt' and 'prompt_embeds_id'")
    if prompt is not None and (not isinstance(prompt, str) or not prompt.strip() or len(prompt) > 2000):
        raise RequestError("'prompt' must be non-empty text of at most 2000 characters")
    if embeds is not None and (not isinstance(embeds, str) or not EMBEDS_ID.match(embeds)):
        raise RequestError("'prompt_embeds_id' must be 1-128 characters of letters, digits, '_', '.', '-'")
    schedule = None
    if body.get("schedule") is not None:
        if not isinstance(body["schedule"], str):
            raise RequestError("'schedule' must be text such as \"8x14,2x14\"")
        try:
            schedule = parse_schedule(body["schedule"], "'schedule'")
        except ValueError as err:
            raise RequestError(str(err)) from None
    steps = _int(body, "steps", 1, MAX_SERVE_STEPS, len(schedule) if schedule else default_steps)
    if schedule is not None:
        try:
            check_schedule(schedule, engine_sizes, steps, "'schedule'")
        except ValueError as err:
            raise RequestError(str(err)) from None
    sizes = body.get("sizes")
    if sizes is not None:
        if not isinstance(sizes, list) or not sizes or not all(isinstance(p, int) and not isinstance(p, bool)
                                                                for p in sizes):
            raise RequestError(f"'sizes' must be a list of patch sizes, some of {list(engine_sizes)}")
        unknown = sorted(set(sizes) - set(engine_sizes))
        if unknown:
            raise RequestError(f"'sizes' has unknown patch size(s) {unknown}; the engines have {list(engine_sizes)}")
        if min(engine_sizes) not in sizes:
            raise RequestError(f"'sizes' must include the base patch size {min(engine_sizes)}")
        sizes = tuple(sorted(set(sizes)))
    cache = body.get("cache")
    if cache is not None:
        if not isinstance(cache, str):
            raise RequestError("'cache' must be text: teacache:T, fbcache:T or none")
        from ..runtime.cache.spec import parse_cache  # only when asked: the common body stays import-light

        try:
            spec = parse_cache(cache)
        except ValueError as err:
            raise RequestError(str(err).replace("--cache", "'cache'")) from None
        cache = str(spec) if spec is not None else "none"
    output = body.get("output", "png")
    if output not in OUTPUTS:
        raise RequestError(f"'output' must be one of {', '.join(OUTPUTS)} (got {output!r})")
    height, width = (None if body.get(k) is None else _int(body, k, 1, limits.MAX_SIDE) for k in ("height", "width"))
    if (height is None) != (width is None):
        raise RequestError("give 'height' and 'width' together (one of the engines' resolution buckets), "
                           "or neither")
    loras = _loras(body.get("loras"))
    return GenerateRequest(
        prompt=prompt, prompt_embeds_id=embeds, seed=_int(body, "seed", 0, limits.MAX_SEED, 0), steps=steps,
        tau=_float(body, "tau", 0.0, None), rho=_float(body, "rho", 0.0, 1.0, open_ends=True), sizes=sizes,
        schedule=schedule, guidance=_float(body, "guidance", 0.0, 100.0), cache=cache, output=output,
        height=height, width=width, loras=loras,
    )


def _loras(value) -> tuple[tuple[str, float], ...]:
    """`[{"name": ..., "scale": ...}, ...]` -> ((name, scale), ...); names are files of the server's --lora-dir."""
    if value is None:
        return ()
    shape = f"'loras' must be a list of at most {MAX_LORAS} objects {{\"name\": NAME, \"scale\": S}}"
    if not isinstance(value, list) or len(value) > MAX_LORAS or not all(isinstance(v, dict) for v in value):
        raise RequestError(shape)
    out = []
    for item in value:
        unknown = sorted(set(item) - {"name", "scale"})
        if unknown:
            raise RequestError(f"'loras' entries take 'name' and 'scale'; unknown {unknown}")
        name = item.get("name")
        if not isinstance(name, str) or not EMBEDS_ID.match(name):
            raise RequestError("a 'loras' name must be 1-128 characters of letters, digits, '_', '.', '-' "
                               "(a file NAME.safetensors of the server's --lora-dir)")
        scale = _float({"scale": item.get("scale", 1.0)}, "scale", -MAX_LORA_SCALE, MAX_LORA_SCALE)
        out.append((name, scale))
    return tuple(out)
