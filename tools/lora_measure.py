"""The figures of docs/loras.md: LoRA swap time against the export time of the same folder, resident memory,
and how well a LoRA trained on the base model carries to DDiT's coarse sizes (the demo).

    python tools/lora_measure.py --lora ddit_export/assets/demo/loras/red_blue_swap.safetensors --work W

1. Exports the demo engines in the staged layout into W/demo-staged (timed: the export time of the folder).
2. Per backend (onnx, torch), in this process one after the other: RSS after loading, the time of
   `set_loras([L])` (first apply: reads the file), of a swap to `[L at 0.5]`, of `set_loras([])`, RSS after
   each, and the LoRA's own tensor bytes.
3. PSNR on the demo (every class, --seeds seeds, --steps steps, onnx): DDiT+LoRA against base+LoRA (every step
   at the base size, same LoRA), next to DDiT against base without a LoRA; the LoRA's own effect (base+LoRA
   against base) for scale; the mean token cost of the DDiT schedules. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path

import psutil
import torch


def rss_mib() -> float:
    gc.collect()
    return psutil.Process().memory_info().rss / 2**20


def swap_figures(folder: Path, lora: Path, backend_name: str) -> dict:
    from ddit_export.runtime.backends import get_backend
    from ddit_export.runtime.loras import read_lora

    before = rss_mib()
    backend = get_backend(backend_name, folder)
    out = {"rss_loaded_mib": round(rss_mib() - before, 1)}
    base = rss_mib()
    for label, loras in (("apply", [(lora, 1.0)]), ("swap", [(lora, 0.5)]), ("again", [(lora, 1.0)]),
                         ("remove", [])):
        start = time.perf_counter()
        backend.set_loras(loras)
        out[f"{label}_s"] = round(time.perf_counter() - start, 4)
        out[f"rss_after_{label}_mib"] = round(rss_mib() - base, 1)
    out["lora_tensor_mib"] = round(read_lora(lora).nbytes / 2**20, 3)
    backend.close()
    return out


def psnr_figures(folder: Path, lora: Path, seeds: int, steps: int) -> dict:
    from ddit_export.bench.quality import psnr
    from ddit_export.pipelines import generate
    from ddit_export.pipelines.demo.class_table import demo_conditioning
    from ddit_export.pipelines.demo.classes import CLASS_NAMES
    from ddit_export.pipelines.demo.codec import decode
    from ddit_export.runtime.backends import get_backend
    from ddit_export.runtime.runner import schedule_config

    images: dict[str, list] = {k: [] for k in ("base", "ddit", "base_lora", "ddit_lora")}
    costs = []
    with get_backend("onnx", folder) as backend:
        tokens = {p: (backend.latent_shape[-1] // p) ** 2 for p in backend.patch_sizes}
        for loras, suffix in (([], ""), ([(lora, 1.0)], "_lora")):
            backend.set_loras(loras)
            for name in CLASS_NAMES:
                cond = demo_conditioning(name)
                for seed in range(seeds):
                    for kind, config in (("base", schedule_config(backend, static_patch=backend.base_patch)),
                                         ("ddit", schedule_config(backend))):
                        result = generate(backend, cond, config, steps=steps, seed=seed)
                        images[kind + suffix].append(decode(result.latent))
                        if kind == "ddit" and not suffix:
                            base_tokens = tokens[backend.base_patch]
                            costs.append(sum(tokens[p] for p in result.trace.schedule) / (base_tokens * steps))

    def mean_psnr(a, b):
        values = [psnr(x, y) for x, y in zip(images[a], images[b])]
        return round(sum(values) / len(values), 2), round(min(values), 2)

    return {"samples": len(images["base"]), "steps": steps,
            "psnr_ddit_vs_base_db": mean_psnr("ddit", "base"),
            "psnr_ddit_lora_vs_base_lora_db": mean_psnr("ddit_lora", "base_lora"),
            "psnr_base_lora_vs_base_db": mean_psnr("base_lora", "base"),
            "ddit_token_cost": round(sum(costs) / len(costs), 3)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lora", required=True, type=Path)
    p.add_argument("--work", required=True, type=Path)
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--steps", type=int, default=28)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from ddit_export.demo.engines import demo_request
    from ddit_export.export.build import export_engines

    folder = args.work / "demo-staged"
    start = time.perf_counter()
    export_engines(demo_request(folder, force=True, layout="staged"))
    figures = {"export_s": round(time.perf_counter() - start, 2)}
    for name in ("onnx", "torch"):
        figures[name] = swap_figures(folder, args.lora, name)
        figures[name]["swap_vs_export"] = round(figures[name]["swap_s"] / figures["export_s"], 5)
    figures["demo"] = psnr_figures(folder, args.lora, args.seeds, args.steps)
    print(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
