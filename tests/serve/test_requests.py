"""`POST /v1/generate` bodies: every fault is one 4xx message naming the field (no engines, no Ray)."""

from __future__ import annotations

import json

import pytest

from ddit_export.serve.requests import MAX_BODY_BYTES, RequestError, parse_body

SIZES = (2, 4, 8)


def parse(body) -> object:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return parse_body(raw, SIZES, default_steps=28)


def test_defaults_and_fields():
    req = parse({"prompt": "red circle", "seed": 7, "tau": 0.01, "rho": 0.5, "sizes": [4, 2], "output": "latent"})
    assert (req.prompt, req.seed, req.steps, req.tau, req.rho, req.sizes, req.output) == \
        ("red circle", 7, 28, 0.01, 0.5, (2, 4), "latent")
    fixed = parse({"prompt": "x", "schedule": "8x3,2x2"})
    assert fixed.steps == 5 and fixed.schedule == (8, 8, 8, 2, 2)
    assert parse({"prompt_embeds_id": "cat-01"}).prompt_embeds_id == "cat-01"


def test_height_and_width_pick_a_bucket_together():
    req = parse({"prompt": "x", "height": 768, "width": 1344})
    assert (req.height, req.width) == (768, 1344) and req.to_json()["height"] == 768
    assert parse({"prompt": "x"}).height is None  # the folder's default bucket


@pytest.mark.parametrize("body, status, words", [
    ({"prompt": "a", "height": 512}, 422, "'height' and 'width' together"),
    ({"prompt": "a", "height": 512, "width": "512"}, 422, "'width' must be an integer"),
    ({"prompt": "a", "height": 0, "width": 512}, 422, "'height' must be an integer from 1 to 4096 (got 0)"),
    (b'{"prompt": "red', 400, "not valid JSON"),
    (b"\xff\xfe", 400, "not valid JSON"),
    (b"[1, 2]", 400, "JSON object"),
    (b"x" * (MAX_BODY_BYTES + 1), 413, "limit"),
    ({"prompt": "a", "colour": 1}, 422, "unknown field"),
    ({"seed": 1}, 422, "exactly one of 'prompt'"),
    ({"prompt": "a", "prompt_embeds_id": "b"}, 422, "exactly one of 'prompt'"),
    ({"prompt": "a", "steps": 0}, 422, "'steps' must be an integer from 1 to 1000 (got 0)"),
    ({"prompt": "a", "steps": 10**6}, 422, "'steps' must be an integer from 1 to 1000"),
    ({"prompt": "a", "steps": 2.5}, 422, "'steps' takes an integer"),
    ({"prompt": "a", "steps": "28"}, 422, "'steps' must be an integer"),
    ({"prompt": "a", "steps": True}, 422, "'steps' must be an integer"),
    ({"prompt": "a", "seed": -1}, 422, "'seed'"),
    ({"prompt": "a", "sizes": [2, 16]}, 422, "unknown patch size(s) [16]"),
    ({"prompt": "a", "sizes": [4, 8]}, 422, "base patch size 2"),
    ({"prompt": "a", "schedule": "2x3,16x2"}, 422, "[16]"),
    ({"prompt": "a", "schedule": "8x3", "steps": 4}, 422, "3 steps"),
    ({"prompt": "a", "rho": 1.0}, 422, "'rho'"),
    ({"prompt": "a", "tau": -1}, 422, "'tau'"),
    (b'{"prompt": "a", "tau": NaN}', 422, "'tau' must be a finite number"),  # Python's json reads NaN
    ({"prompt": "a", "output": "jpeg"}, 422, "'output'"),
    ({"prompt_embeds_id": "../etc/passwd"}, 422, "prompt_embeds_id"),
])
def test_refusals(body, status, words):
    with pytest.raises(RequestError) as caught:
        parse(body)
    assert caught.value.status == status
    assert words in str(caught.value)
    assert "\n" not in str(caught.value)


def test_cache_field():
    from ddit_export.serve.requests import RequestError, parse_body

    sizes = (2, 4, 8)
    assert parse_body(b'{"prompt": "x", "cache": "TeaCache:0.3"}', sizes, 28).cache == "teacache:0.3"
    assert parse_body(b'{"prompt": "x", "cache": "none"}', sizes, 28).cache == "none"
    assert parse_body(b'{"prompt": "x"}', sizes, 28).cache is None  # the server's --cache
    for bad, message in ((b'{"prompt": "x", "cache": 0.25}', "'cache' must be text"),
                         (b'{"prompt": "x", "cache": "lru:3"}', "the kind must be one of teacache, fbcache"),
                         (b'{"prompt": "x", "cache": "teacache:-1"}', "finite number >= 0")):
        with pytest.raises(RequestError, match=message) as err:
            parse_body(bad, sizes, 28)
        assert err.value.status == 422
