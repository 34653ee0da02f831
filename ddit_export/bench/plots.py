"""PNG plots of benchmark and calibration results (matplotlib, headless Agg backend)."""

from __future__ import annotations

from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt

    return plt


def plot_latency(rows: list[dict], path) -> Path:
    """Grouped bars: mean latency per patch size, one bar per backend; whiskers to p95."""
    plt = _pyplot()
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    sizes = sorted({r["patch_size"] for r in rows})
    width = 0.8 / max(1, len(backends))
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, name in enumerate(backends):
        picked = {r["patch_size"]: r for r in rows if r["backend"] == name}
        xs = [j + i * width for j, p in enumerate(sizes) if p in picked]
        means = [picked[p]["mean_ms"] for p in sizes if p in picked]
        p95 = [picked[p]["p95_ms"] - picked[p]["mean_ms"] for p in sizes if p in picked]
        ax.bar(xs, means, width, yerr=[[0] * len(p95), p95], capsize=3, label=name)
    ax.set_xticks([j + width * (len(backends) - 1) / 2 for j in range(len(sizes))])
    ax.set_xticklabels([f"p{p}\n{next(r['tokens'] for r in rows if r['patch_size'] == p)} tok" for p in sizes])
    ax.set_ylabel("latency per call (ms, mean; whisker p95)")
    ax.set_title("engine latency per patch size and backend")
    ax.legend()
    return _save(fig, path)


def plot_schedule(schedules: dict[str, list[int]], base: int, path) -> Path:
    """Patch size per denoising step for each seed of the dynamic run (the static base as reference)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3))
    steps = max((len(s) for s in schedules.values()), default=0)
    ax.step(range(steps), [base] * steps, where="mid", color="grey", linestyle="--", label="static base")
    for seed, schedule in schedules.items():
        ax.step(range(len(schedule)), schedule, where="mid", label=f"DDiT seed {seed}")
    ax.set_xlabel("denoising step")
    ax.set_ylabel("patch size")
    ax.set_yticks(sorted({base, *(p for s in schedules.values() for p in s)}))
    ax.set_title("schedule timeline")
    ax.legend(fontsize="small")
    return _save(fig, path)


def plot_calibration(points: list[dict], chosen: dict | None, metric: str, budget: float, speed_key: str,
                     path) -> Path:
    """Speed-up vs quality of every (tau, rho) point; Pareto front, budget line, chosen point."""
    return _save(calibration_figure(points, chosen, metric, budget, speed_key), path)


def calibration_figure(points: list[dict], chosen: dict | None, metric: str, budget: float, speed_key: str):
    """The calibration plot. Every point is labelled with its tau (and rho when several were swept).

    A point identical to the static base has infinite PSNR, which matplotlib would silently drop: it is
    drawn as a triangle on a line above the finite points, marked "inf".
    """
    import math

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    finite = [p[metric] for p in points if math.isfinite(p[metric])] + [budget]
    span = (max(finite) - min(finite)) or abs(max(finite)) or 1.0
    ceiling = max(finite) + 0.15 * span  # where infinite quality is drawn

    def y(point) -> float:
        return point[metric] if math.isfinite(point[metric]) else ceiling

    several_rhos = len({p["rho"] for p in points}) > 1
    for marker, group, label in (("o", [p for p in points if math.isfinite(p[metric])], "(tau, rho) points"),
                                 ("^", [p for p in points if not math.isfinite(p[metric])],
                                  f"{metric} = inf (identical to the base)")):
        if group:
            ax.scatter([p[speed_key] for p in group], [y(p) for p in group], s=18, marker=marker, label=label)
    for p in points:
        text = f"{p['tau']:.2g}" + (f"/{p['rho']:g}" if several_rhos else "")
        ax.annotate(text, (p[speed_key], y(p)), textcoords="offset points", xytext=(3, 3), fontsize=6)
    if any(not math.isfinite(p[metric]) for p in points):
        ax.axhline(ceiling, color="grey", linewidth=0.5)
        ax.annotate("inf", (ax.get_xlim()[0], ceiling), textcoords="offset points", xytext=(2, 2), fontsize=7)
    front = sorted((p for p in points if p["pareto"]), key=lambda p: p[speed_key])
    ax.plot([p[speed_key] for p in front], [y(p) for p in front], color="tab:orange", label="Pareto front")
    ax.axhline(budget, color="tab:red", linestyle="--", label=f"budget {metric} >= {budget:g}")
    if chosen is not None:
        ax.scatter([chosen[speed_key]], [y(chosen)], s=90, marker="*", color="tab:green", zorder=3,
                   label=f"chosen tau={chosen['tau']:.3g}, rho={chosen['rho']:g}")
    ax.set_xlabel(speed_key.replace("_", " "))
    ax.set_ylabel(f"{metric} vs static base")
    ax.set_title("speed vs quality (labels: tau" + ("/rho)" if several_rhos else ")"))
    ax.legend(fontsize="small")
    return fig


FRONT_AXIS = {"psnr": "PSNR vs static base (dB)", "fd": "Frechet distance to real (lower is better)",
              "accuracy": "class accuracy"}


def plot_schedule_front(points: list, path, metric: str = "psnr") -> Path:
    """``metric`` (PSNR, FD or accuracy) vs token cost: fixed schedules by family, their front, and each
    dynamic point labelled."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    finite = [p for p in points if abs(p.value(metric)) != float("inf")]
    families = sorted({p.label.split(" ")[0] for p in finite if p.kind == "fixed"})
    for family in families:
        mine = [p for p in finite if p.kind == "fixed" and p.label.split(" ")[0] == family]
        ax.scatter([p.token_cost for p in mine], [p.value(metric) for p in mine], s=14, alpha=0.6,
                   label=f"fixed: {family}")
    front = sorted((p for p in finite if p.front), key=lambda p: p.token_cost)
    ax.plot([p.token_cost for p in front], [p.value(metric) for p in front], color="black", lw=1, label="fixed front")
    dynamic = sorted((q for q in finite if q.kind == "dynamic"), key=lambda q: q.value(metric))
    values = [q.value(metric) for q in finite]
    spread = max(values + [1.0]) - min(values + [0.0])
    label_y = float("-inf")
    for p in dynamic:
        ax.scatter([p.token_cost], [p.value(metric)], s=90, marker="*", zorder=3,
                   color="tab:green" if p.above_front else "tab:red")
        # Rules often sit close together: labels are stacked at least 5% of the range apart, with leader lines.
        label_y = max(p.value(metric) - 0.03 * spread, label_y + 0.05 * spread)
        ax.annotate(p.label, (p.token_cost, p.value(metric)), xytext=(p.token_cost + 0.06, label_y),
                    fontsize="small", va="center", arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "grey"},
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8})
    ax.set_xlabel("token cost (fraction of the static base's tokens)")
    ax.set_ylabel(FRONT_AXIS[metric])
    ax.set_title("dynamic rules (stars: green above the fixed front) vs fixed schedules")
    ax.legend(fontsize="x-small", loc="lower right" if metric != "fd" else "upper right")
    return _save(fig, path)


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
