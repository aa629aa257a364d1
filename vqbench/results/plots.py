"""PNG figures from run folders (matplotlib, Agg backend: no display needed).

- training curves: train loss, test MSE and perplexity per epoch (``metrics.jsonl``);
- Figure 4 of the GM-VQ paper: box plots of MSE and perplexity across β levels, runs
  grouped by quantizer and ``quantizer.beta`` (``config.yaml``) — read from the run
  folders, so any β sweep or suite feeds it;
- MSE against perplexity, one point per run, with the Pareto front (lower MSE, higher
  perplexity);
- Figure 3: gradient bias against entropy (:mod:`vqbench.experiments`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..errors import UserError  # noqa: E402
from ..rundir import write_atomic  # noqa: E402
from .run_records import RunRecord, find_runs  # noqa: E402


MARKERS = "osD^vPX<>*"


def style(k: int) -> dict[str, Any]:
    """Colour and marker of the k-th series: tab10 colours, a new marker every 10, so that
    eleven Table 1 methods stay apart (tab20's pairs look alike)."""
    return {"color": plt.get_cmap("tab10")(k % 10), "marker": MARKERS[(k + k // 10) % len(MARKERS)]}


def run_labels(runs: list[RunRecord], with_seed: bool = True) -> list[str]:
    """Quantizer names, with the hyperparameters (and seed) that tell same-named runs apart."""
    def settings(run: RunRecord) -> dict[str, Any]:
        return {**run.config.get("quantizer", {}), **({"seed": run.config.get("seed")} if with_seed else {})}

    labels = []
    for run in runs:
        name = run.summary.get("quantizer", run.label)
        twins = [settings(r) for r in runs if r.summary.get("quantizer", r.label) == name]
        mine = settings(run)
        varying = [k for k in mine if k != "name" and len({json.dumps(t.get(k), default=str) for t in twins}) > 1]
        labels.append(name + "".join(f" {k}={mine[k]:g}" if isinstance(mine[k], float) else f" {k}={mine[k]}"
                                     for k in varying))
    return labels


def seed_groups(runs: list[RunRecord]) -> dict[str, list[RunRecord]]:
    """Runs that differ only in their seed, under one label."""
    groups: dict[str, list[RunRecord]] = {}
    for run, label in zip(runs, run_labels(runs, with_seed=False)):
        groups.setdefault(label, []).append(run)
    return groups


def plot_curves(runs: list[RunRecord], path: Path) -> Path:
    """Train loss, test MSE and test perplexity per epoch, one line per run, or per group of
    runs that differ only in their seed: the mean over seeds, the band from min to max."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), constrained_layout=True)
    panels = [("train_loss", "train loss"), ("mse", "test MSE"), ("perplexity", "test perplexity")]
    for k, (label, group) in enumerate(seed_groups(runs).items()):
        epochs = sorted({r["epoch"] for run in group for r in run.history})
        if len(group) > 1:
            label = f"{label} ({len(group)} seeds)"
        for ax, (key, _) in zip(axes, panels):
            by_epoch = [[r[key] for run in group for r in run.history if r["epoch"] == e] for e in epochs]
            ax.plot(epochs, [float(np.mean(v)) for v in by_epoch], ms=5 if len(epochs) < 15 else 0, label=label,
                    **style(k))
            if len(group) > 1:
                ax.fill_between(epochs, [min(v) for v in by_epoch], [max(v) for v in by_epoch],
                                color=style(k)["color"], alpha=0.15, lw=0)
    last = max(r["epoch"] for run in runs for r in run.history)
    for ax, (key, title) in zip(axes, panels):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True, min_n_ticks=1))
        ax.set_xlim(0.5, last + 0.5)
        ax.set_ylabel(title)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        values = [r[key] for run in runs for r in run.history]
        if key != "perplexity" and min(values) > 0:  # SQ-VAE's loss can be negative
            ax.set_yscale("log")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(4, len(labels)), fontsize=8)
    return _save(fig, path)


def beta_groups(runs: list[RunRecord]) -> dict[str, dict[float, list[RunRecord]]]:
    """Runs by quantizer class (gmvq and gmvq-entropy are one family), then by
    ``quantizer.beta``; only families run at ≥ 2 β levels."""
    from ..registry import registry_document

    specs = registry_document().get("quantizers", {})
    groups: dict[str, dict[float, list[RunRecord]]] = {}
    for run in runs:
        q = run.config.get("quantizer", {})
        if "beta" in q:
            family = str(specs.get(q["name"], {}).get("class", q["name"])).rpartition(":")[2]
            groups.setdefault(family, {}).setdefault(float(q["beta"]), []).append(run)
    return {name: levels for name, levels in groups.items() if len(levels) >= 2}


def plot_beta_boxes(runs: list[RunRecord], path: Path) -> Path | None:
    """Figure 4: MSE and perplexity across β levels, one box per level (None: no β sweep)."""
    groups = beta_groups(runs)
    if not groups:
        return None
    fig, axes = plt.subplots(len(groups), 2, figsize=(11, 4 * len(groups)), squeeze=False,
                             constrained_layout=True)
    for (name, levels), row in zip(sorted(groups.items()), axes):
        betas = sorted(levels)
        for ax, key, title in ((row[0], "mse", "test MSE"), (row[1], "perplexity", "test perplexity")):
            data = [[r.summary[key] for r in levels[b]] for b in betas]
            ax.boxplot(data, tick_labels=[f"{b:g}" for b in betas])
            for i, values in enumerate(data, 1):  # the runs themselves: few runs make thin boxes
                ax.scatter(np.full(len(values), i), values, s=12, alpha=0.6, color="tab:blue", zorder=3)
            ax.set_xlabel("β (weight of KL(q^B ‖ uniform))")
            ax.set_ylabel(title)
            ax.set_title(f"{name}: {title} by β (n = {sum(map(len, data))} runs)")
            ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def pareto_front(mse: np.ndarray, perplexity: np.ndarray) -> np.ndarray:
    """Indices of the points no other point beats on both (lower MSE, higher perplexity),
    ordered by MSE."""
    order = np.lexsort((-perplexity, mse))
    front, best = [], -np.inf
    for i in order:
        if perplexity[i] > best:
            front.append(i)
            best = perplexity[i]
    return np.asarray(front, dtype=int)


def plot_pareto(runs: list[RunRecord], path: Path) -> Path:
    """Test MSE against perplexity, coloured by quantizer, with the Pareto front."""
    mse = np.array([r.summary["mse"] for r in runs])
    ppl = np.array([r.summary["perplexity"] for r in runs])
    names = [r.summary.get("quantizer", "?") for r in runs]
    fig, ax = plt.subplots(figsize=(8, 5.5), constrained_layout=True)
    for k, name in enumerate(sorted(set(names))):
        idx = [i for i, n in enumerate(names) if n == name]
        ax.scatter(mse[idx], ppl[idx], s=40, label=name, zorder=3, **style(k))
    front = pareto_front(mse, ppl)
    ax.plot(mse[front], ppl[front], "k--", lw=1.2, marker="o", mfc="none", ms=11, label="Pareto front",
            zorder=2)  # open rings: a one-point front still shows
    ax.set_xlabel("test MSE (lower is better)")
    ax.set_ylabel("test perplexity (higher is better)")
    ax.set_title(f"MSE vs perplexity ({len(runs)} runs)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _save(fig, path)


def plot_gradient_bias(results: list, path: Path) -> Path:
    """Figure 3: straight-through Gumbel-softmax gradient bias against entropy, per seed."""
    rhos = [r.rho for r in results]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), constrained_layout=True,
                             gridspec_kw={"width_ratios": [2, 1]})
    cmap = plt.get_cmap("viridis")
    for k, r in enumerate(results):
        axes[0].scatter(r.entropy, r.bias, s=10, alpha=0.7, color=cmap(k / max(len(results) - 1, 1)),
                        label=f"seed {r.seed}: ρ = {r.rho:.2f}" if len(results) <= 10 else None)
    axes[0].set_xlabel("entropy H(π_T) (nats)")
    axes[0].set_ylabel("gradient bias ‖ĝ − g*‖₂")
    axes[0].set_title(f"ST Gumbel-softmax gradient bias vs entropy (median ρ = {np.median(rhos):.2f})")
    axes[0].grid(alpha=0.3)
    if len(results) <= 10:
        axes[0].legend(fontsize=7, ncol=2)
    axes[1].hist(rhos, bins=np.linspace(-1, 1, 21), color="tab:blue", alpha=0.8)
    axes[1].axvline(np.median(rhos), color="k", ls="--", label=f"median {np.median(rhos):.2f}")
    axes[1].axvline(0.77, color="tab:red", ls=":", label="paper 0.77")
    axes[1].set_xlabel("Pearson ρ(entropy, bias)")
    axes[1].set_ylabel("seeds")
    axes[1].set_title(f"ρ over {len(rhos)} seeds")
    axes[1].legend(fontsize=8)
    return _save(fig, path)


def plot_runs(root: str | Path, out: str | Path | None = None, suite: str | None = None) -> list[Path]:
    """Every figure the runs under ``root`` support, as PNGs in ``out`` (default root/plots)."""
    runs = [r for r in find_runs(root, suite) if r.history and r.summary.get("status", "finished") == "finished"]
    if not runs:
        raise UserError(f"no finished run folders (with summary.json and metrics.jsonl) under {root}")
    out = Path(out) if out is not None else Path(root) / "plots"
    written = [plot_curves(runs, out / "curves.png"), plot_pareto(runs, out / "mse_vs_perplexity.png")]
    boxes = plot_beta_boxes(runs, out / "beta_boxplots.png")
    return written + ([boxes] if boxes else [])


def _save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda fh: fig.savefig(fh, format="png", dpi=110), "wb")
    plt.close(fig)
    return path
