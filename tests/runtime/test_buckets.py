"""Backends at every resolution bucket of a folder: the bucket picked by (height, width), one shared ONNX
Runtime chain (one trunk session) for all of them, per-bucket fitted blocks, and a one-line refusal."""

from __future__ import annotations

import shutil

import pytest
import torch

from ddit_export.artifacts.manifest import read_manifest, update_scheduler
from ddit_export.runtime.backends import BackendError, get_backend
from ddit_export.runtime.runner import schedule_config
from tests.conftest import TINY_BUCKETS

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def _inputs(backend, seed=0):
    gen = torch.Generator().manual_seed(seed)
    feeds = {t.name: torch.randn(t.shape, generator=gen) for t in backend.io_spec.inputs}
    feeds["timestep"] = torch.full(feeds["timestep"].shape, 0.7)
    return feeds.pop("latent"), feeds


def test_each_bucket_runs_its_own_geometry_and_matches_torch(tiny_flux_bucket_engines):
    onnx = [get_backend("onnx", tiny_flux_bucket_engines, bucket=b) for b in TINY_BUCKETS]
    try:
        assert onnx[0].chain is onnx[1].chain  # one set of sessions for every bucket
        trunks = {per["trunk"] for per in onnx[0].chain.files.values()}
        assert len(trunks) == 1 and len(onnx[0].chain.sessions) == 1 + 2 * 2 * len(TINY_BUCKETS)
        for (h, w), backend in zip(TINY_BUCKETS, onnx):
            assert backend.latent_shape[-2:] == (h // 8, w // 8)
            with get_backend("torch", tiny_flux_bucket_engines, bucket=(h, w)) as eager:
                latent, cond = _inputs(backend)
                for p in (2, 4):
                    got, want = backend(p, latent, **cond), eager(p, latent, **cond)
                    assert got.shape == latent.shape and (got - want).abs().max() < 1e-4, (h, w, p)
            other = _inputs(onnx[1 - TINY_BUCKETS.index((h, w))])[0]
            with pytest.raises(BackendError, match="built for"):  # another bucket's latent
                backend(2, other, **cond)
    finally:
        chain = onnx[0].chain
        for backend in onnx:
            backend.close()
    assert not chain.sessions  # the last backend to close released the shared chain


def test_the_default_bucket_is_the_first(tiny_flux_bucket_engines):
    with get_backend("onnx", tiny_flux_bucket_engines) as backend:
        assert backend.manifest.bucket.name == "64x64" and backend.latent_shape == (1, 16, 8, 8)


def test_an_unknown_resolution_is_refused_listing_the_buckets(tiny_flux_bucket_engines):
    with pytest.raises(BackendError, match=r"no engines for 64x96: this folder's resolution buckets are 64x64, "
                                           r"48x96"):
        get_backend("onnx", tiny_flux_bucket_engines, bucket=(64, 96))


def test_a_calibration_is_stored_for_its_bucket_alone(tiny_flux_bucket_engines, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(tiny_flux_bucket_engines, folder)
    manifest = read_manifest(folder)
    update_scheduler(folder, manifest.at_bucket(48, 96), {"tau": 0.25})
    update_scheduler(folder, manifest, {"tau": 0.5})  # the default bucket: the top-level block
    again = read_manifest(folder)
    assert again.at_bucket(48, 96).scheduler["tau"] == 0.25 and again.scheduler["tau"] == 0.5
    assert again["buckets"][1]["scheduler"]["rho"] == manifest.scheduler["rho"]  # the rest as inherited
    with get_backend("onnx", folder, bucket=(48, 96)) as backend:
        assert schedule_config(backend).tau == 0.25
