"""TeaCache's rescaling polynomials: the published ones per family and model, or the model's own fit.

TeaCache (ali-vilab/TeaCache) maps the relative L1 change of its input signal to an estimate of the
output's change with a 4th-order polynomial fitted per model (highest degree first). Wrong
coefficients silently cut the hit rate, so a model without published ones (the demo, a fine-tune)
must be fitted with `ddit-export calibrate --cache`, which stores the fit in the manifest
(`cache.teacache.coefficients`, see `bench/cache_fit.py`); a stored fit always wins.
"""

from __future__ import annotations

# TeaCache4FLUX (FLUX.1-dev; the repository uses it for FLUX.1-schnell and fine-tunes too).
FLUX_DEV = (498.651651, -283.781631, 55.8554382, -3.82021401, 0.264230861)
# TeaCache4Wan2.1, text-to-video, signal = the timestep embedding (not the "ret_steps" variant).
WAN21_T2V_1_3B = (2396.76752, -1311.10545, 201.331979, -8.29855975, 0.137887774)
WAN21_T2V_14B = (-5784.54975374, 5449.50911966, -1811.16591783, 256.27178429, -13.02252404)

# (family, lower-case substring of the manifest's model id) -> coefficients; first match wins.
PUBLISHED = (
    ("flux", "flux.1", FLUX_DEV),
    ("wan", "1.3b", WAN21_T2V_1_3B),
    ("wan", "14b", WAN21_T2V_14B),
)


def teacache_coefficients(manifest: dict) -> tuple[tuple[float, ...], str]:
    """(coefficients, where from) for the folder's model; a ValueError with the fix when there are none."""
    stored = manifest.get("cache", {}).get("teacache", {})
    if stored.get("coefficients"):
        return tuple(float(c) for c in stored["coefficients"]), "calibrated (manifest cache.teacache)"
    model = str(manifest["model"]["id"]).lower()
    for family, key, coefficients in PUBLISHED:
        if manifest["family"] == family and key in model:
            return coefficients, f"published TeaCache coefficients for {family} '{key}'"
    raise ValueError(f"TeaCache has no published coefficients for {manifest['model']['id']!r}: fit them on this "
                     f"model with `ddit-export calibrate ENGINE_DIR --cache` (stored in the manifest)")


def rescale(coefficients, x: float) -> float:
    """The polynomial at x (Horner), floored at 0: a change estimate is never negative, so that the
    accumulated sum never falls and threshold 0 never skips a step."""
    y = 0.0
    for c in coefficients:
        y = y * x + c
    return max(y, 0.0)
