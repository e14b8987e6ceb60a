"""The frontier's figures from trained runs: curve interpolation, the per-cell summary table, the SFCM-overlap table
and the PNG plot. Pure functions of the run JSONs (`bench/fidelity.py` trains and evaluates; this reads), so a cached
workdir can be re-summarised without torch.
"""

from __future__ import annotations

import math
from pathlib import Path

COLUMNS = ["method", "runs", "pollution @ LoRA's target (× LoRA)", "pollution @ naive's target (× naive)",
           "target @ LoRA's pollution", "best target (× naive)", "final pollution", "final target", "final leak Δ",
           "final target − leak", "train s"]


# -- curves ---------------------------------------------------------------------------------------------------------
def _dense(points: list[tuple[float, float]], k: int = 64) -> list[tuple[float, float]]:
    """The piecewise-linear path through (pollution, target) points in step order, sampled densely."""
    out = [points[0]]
    for (p0, t0), (p1, t1) in zip(points, points[1:]):
        out += [(p0 + (p1 - p0) * a / k, t0 + (t1 - t0) * a / k) for a in range(1, k + 1)]
    return out


def pollution_at_target(points: list[tuple[float, float]], target: float) -> float:
    """Lowest pollution anywhere on the path (checkpoints joined by straight lines) where the target rate is at
    least ``target``; NaN if the path never gets there."""
    ok = [p for p, t in _dense(points) if t >= target - 1e-9]
    return min(ok) if ok else math.nan


def target_at_pollution(points: list[tuple[float, float]], pollution: float) -> float:
    """Highest target rate anywhere on the path while pollution is at most ``pollution``."""
    ok = [t for p, t in _dense(points) if p <= pollution + 1e-9]
    return max(ok) if ok else math.nan


def _mean_sd(xs: list[float]) -> tuple[float, float, int]:
    v = [x for x in xs if x is not None and not math.isnan(x)]
    if not v:
        return math.nan, math.nan, 0
    m = sum(v) / len(v)
    sd = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0
    return m, sd, len(v)


def fmt(xs: list[float], digits: int = 3) -> str:
    m, sd, n = _mean_sd(xs)
    if n == 0:
        return "not reached"
    miss = f" ({len(xs) - n} not reached)" if n < len(xs) else ""
    return f"{m:.{digits}f} ± {sd:.{digits}f}{miss}"


# -- summary --------------------------------------------------------------------------------------------------------
def summarise(runs: list[dict], names: list[str]) -> tuple[dict, list[list]]:
    """Per (configuration, seed): every frontier figure against that cell's naive and LoRA; then mean ± sd."""
    cells: dict[tuple[str, int], dict[str, dict]] = {}
    for r in runs:
        cells.setdefault((r["config"]["name"], r["seed"]), {})[r["variant"]] = r
    per: dict[str, dict[str, list]] = {n: {} for n in names}

    def add(n: str, key: str, v: float) -> None:
        per[n].setdefault(key, []).append(v)

    def pts(r: dict) -> list[tuple[float, float]]:
        return [(c["attr_drift"], c["target_rate"]) for c in r["curve"]]

    for (_cname, _seed), vs in sorted(cells.items()):
        lora, naive = vs.get("lora"), vs.get("naive")
        for n, r in vs.items():
            final = r["curve"][-1]
            add(n, "final_pollution", final["attr_drift"])
            add(n, "final_target", final["target_rate"])
            add(n, "final_leak", final["target_leak"])
            # how much of the target rate answers the text: glasses on target prompts beyond those that appear on
            # base prompts anyway (an unconditional "glasses on everyone" scores a high target rate and a high leak)
            add(n, "final_cond_target", final["target_rate"] - final["target_leak"])
            add(n, "train_s", r["train_s"])
            best = max(c["target_rate"] for c in r["curve"])
            if naive:
                t_n, p_n = naive["curve"][-1]["target_rate"], naive["curve"][-1]["attr_drift"]
                add(n, "best_target_x_naive", best / max(t_n, 1e-9))
                add(n, "pol_at_naive_target_x_naive", pollution_at_target(pts(r), t_n) / max(p_n, 1e-9))
            if lora:
                t_l, p_l = lora["curve"][-1]["target_rate"], lora["curve"][-1]["attr_drift"]
                add(n, "pol_at_lora_target_x_lora", pollution_at_target(pts(r), t_l) / max(p_l, 1e-9))
                add(n, "target_at_lora_pollution", target_at_pollution(pts(r), p_l))
        for full, ablated in (("spf", "spf w/o SFCM"), ("spf-paper", "spf-paper w/o SFCM")):
            if full in vs and ablated in vs:
                p_full, p_abl = vs[full]["curve"][-1]["attr_drift"], vs[ablated]["curve"][-1]["attr_drift"]
                p_eq = min(p_full, p_abl)  # where both curves have been
                add(ablated, "sfcm_gap", target_at_pollution(pts(vs[full]), p_eq)
                    - target_at_pollution(pts(vs[ablated]), p_eq))
                # at the full method's own operating point: the ablation's best target without polluting more.
                # When the ablation ends an image-attribute lower, p_eq reads the full method's curve near its
                # origin and says little; this one asks what the ablation learns for the pollution SPF costs.
                add(ablated, "sfcm_gap_at_full", vs[full]["curve"][-1]["target_rate"]
                    - target_at_pollution(pts(vs[ablated]), p_full))
    rows = []
    for n in names:
        d = per[n]
        if not d:
            continue
        rows.append([n, len(d.get("final_target", [])), fmt(d.get("pol_at_lora_target_x_lora", [])),
                     fmt(d.get("pol_at_naive_target_x_naive", [])), fmt(d.get("target_at_lora_pollution", [])),
                     fmt(d.get("best_target_x_naive", [])), fmt(d["final_pollution"]), fmt(d["final_target"]),
                     fmt(d["final_leak"]), fmt(d["final_cond_target"]), fmt(d["train_s"], 0)])
    return per, rows


def overlap_table(runs: list[dict]) -> list[list]:
    """SFCM vs rendered glasses, per setting and layer resolution: mean over runs of IoU, precision, recall, mean M
    inside and outside the glasses."""
    acc: dict[tuple[str, int], dict[str, list]] = {}
    for r in runs:
        for setting, per_res in (r.get("sfcm_overlap") or {}).items():
            for res, m in per_res.items():
                d = acc.setdefault((setting, int(res)), {})
                for k, v in m.items():
                    d.setdefault(k, []).append(v)
    rows = []
    for (setting, res), d in sorted(acc.items(), key=lambda x: (x[0][0], -x[0][1])):
        rows.append([setting, f"{res}×{res}"] + [fmt(d[k]) for k in ("iou", "precision", "recall", "m_in", "m_out")]
                    + [len(d["iou"])])
    return rows


def plot(runs: list[dict], names: list[str], path: Path) -> Path:
    """One panel per configuration: target rate (x) vs pollution (y), thin per seed, thick = mean over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfgs = sorted({r["config"]["name"] for r in runs})
    fig, axes = plt.subplots(1, len(cfgs), figsize=(6 * len(cfgs), 5), squeeze=False)
    colors = dict(zip(names, plt.cm.tab10.colors))
    for ax, c in zip(axes[0], cfgs):
        desc = next(r["config"] for r in runs if r["config"]["name"] == c)
        for n in names:
            rs = [r for r in runs if r["config"]["name"] == c and r["variant"] == n]
            if not rs:
                continue
            for r in rs:
                ax.plot([p["target_rate"] for p in r["curve"]], [p["attr_drift"] for p in r["curve"]], color=colors[n],
                        alpha=0.25, lw=0.8)
            k = min(len(r["curve"]) for r in rs)
            mt = [sum(r["curve"][i]["target_rate"] for r in rs) / len(rs) for i in range(k)]
            mp = [sum(r["curve"][i]["attr_drift"] for r in rs) / len(rs) for i in range(k)]
            ax.plot(mt, mp, color=colors[n], lw=2.2, marker="o", ms=3, label=f"{n} ({len(rs)} seeds)")
        sp = ", ".join(f"{k}={v}" for k, v in desc["spurious"].items())
        ax.set_title(f"config {c}: spurious {sp}\nft seed {desc['ft_seed']}, eval seed {desc['eval_seed']}", fontsize=9)
        ax.set_xlabel("target rate (glasses probe, target prompts) →")
        ax.set_ylabel("pollution (base-attribute drift, base prompts) ↓")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Pollution vs target rate along training (checkpoints; lower right is better)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
