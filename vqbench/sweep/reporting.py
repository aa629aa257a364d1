"""A sweep's results: the trials as a tidy DataFrame, the best trial or Pareto front, PNG plots.

``trials_dataframe(study)`` is the reusable piece (one row per trial, parameters under
their config keys, objectives under their metric names, the run folder of each trial);
``report`` writes it as parquet + CSV and draws the optimisation history and, for two
objectives, the Pareto front (matplotlib's Agg canvas: no display, no global backend change).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import optuna
import pandas as pd
from optuna.trial import TrialState

from ..errors import UserError
from ..rundir import write_atomic
from .storage import (DEFAULT_OUT, default_storage, default_study_name, is_rdb,
                            journal_path, make_storage, redact)

ATTR_COLUMNS = ("code_perplexity", "codes_used", "wall_s", "run_dir", "failure", "lost",
                "worker_host", "worker_pid", "worker_index", "sampler_seed")


@dataclass
class SweepReport:
    study_name: str
    frame: pd.DataFrame
    best: pd.DataFrame  # the best trial (one objective) or the Pareto front (several)
    files: dict[str, Path] = field(default_factory=dict)


def objective_names(study: optuna.Study) -> list[str]:
    stored = study.user_attrs.get("objectives")
    if stored and len(stored) == len(study.directions):
        return [o["metric"] for o in stored]
    return [f"value_{i}" for i in range(len(study.directions))]


def trials_dataframe(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: number, state, parameters, objectives, run folder, worker, retry, times."""
    names = objective_names(study)
    front = {t.number for t in study.best_trials} if len(names) > 1 else set()
    rows = []
    for t in study.get_trials(deepcopy=False):
        row: dict[str, Any] = {"study": study.study_name, "trial": t.number, "state": t.state.name.lower()}
        row.update(t.params)
        values = t.values or [None] * len(names)
        row.update({n: (t.user_attrs.get(n, v) if t.state == TrialState.COMPLETE else v) for n, v in zip(names, values)})
        row.update({k: t.user_attrs.get(k) for k in ATTR_COLUMNS})
        row["last_epoch"] = max(t.intermediate_values, default=None)
        row["retry_of"] = t.system_attrs.get("failed_trial")
        row["start"], row["complete"] = t.datetime_start, t.datetime_complete
        row["duration_s"] = t.duration.total_seconds() if t.duration else None
        if len(names) > 1:
            row["on_front"] = t.number in front
        rows.append(row)
    return pd.DataFrame(rows)


def load_existing_study(storage: str, study_name: str, sweep_name: str | None = None) -> optuna.Study:
    """The study; with ``sweep_name``, a missing default name falls back to that sweep's only study."""
    if not is_rdb(storage) and not journal_path(storage).is_file():
        raise UserError(f"no sweep storage at {journal_path(storage)}; run the sweep first, or pass "
                        "--out / --storage where it ran")
    backend = make_storage(storage)
    names = optuna.get_all_study_names(backend)
    if study_name not in names and sweep_name:
        # e.g. `sweep gamma-beta --report` after a run with --dataset cifar10-tiny
        mine = [s.study_name for s in optuna.get_all_study_summaries(backend)
                if s.user_attrs.get("sweep") == sweep_name]
        study_name = mine[0] if len(mine) == 1 else study_name
    if study_name not in names:
        from ..errors import suggest

        raise UserError(f"no study {study_name!r} in {redact(storage)}{suggest(study_name, names)}")
    return optuna.load_study(study_name=study_name, storage=backend)


def report(spec_or_study: Any, *, storage: str | None = None, study_name: str | None = None,
           out: str | Path = DEFAULT_OUT, log: Callable[[str], None] | None = None) -> SweepReport:
    """Print the best trial / Pareto front; write trials.parquet, trials.csv and PNGs under OUT/reports/STUDY."""
    log = log or print
    spec = None if isinstance(spec_or_study, str) else spec_or_study
    name = study_name or (spec_or_study if spec is None else default_study_name(spec))
    study = load_existing_study(storage or default_storage(out), name,
                                sweep_name=spec.name if spec is not None and not study_name else None)
    name = study.study_name
    frame = trials_dataframe(study)
    names = objective_names(study)
    directions = [d.name.lower() for d in study.directions]
    folder = Path(out).expanduser() / "reports" / name
    folder.mkdir(parents=True, exist_ok=True)
    files = {"csv": folder / "trials.csv", "parquet": folder / "trials.parquet"}
    write_atomic(files["csv"], lambda fh: frame.to_csv(fh, index=False), "w")
    tidy = frame.astype({c: "string" for c in ("failure", "lost", "worker_host", "run_dir") if c in frame})
    write_atomic(files["parquet"], lambda fh: tidy.to_parquet(fh, index=False), "wb")
    done = frame[frame.state == "complete"]
    counts = frame.state.value_counts().to_dict()
    log(f"study {name}: {len(frame)} trials (" + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) + ")")
    params = [c for c in frame.columns if "." in c and c not in ("run_dir",)]
    show = ["trial", *params, *names, "codes_used", "run_dir"]
    if done.empty:
        best = done
        log("no complete trial yet")
    elif len(names) == 1:
        pick = done[names[0]].idxmin() if directions[0] == "minimize" else done[names[0]].idxmax()
        best = done.loc[[pick]]
        log(f"best trial ({directions[0]} {names[0]}):")
    else:
        best = done[done.on_front].sort_values(names[0])
        log(f"Pareto front ({', '.join(f'{d} {n}' for d, n in zip(directions, names))}): {len(best)} trials")
    if not best.empty:
        log(best[[c for c in show if c in best]].to_string(index=False))
    files["history"] = plot_history(frame, names, directions, folder / "history.png", name)
    if len(names) == 1 and params and not done.empty:
        files["params"] = plot_params(frame, study, params, names[0], folder / "params.png", name)
    if len(names) == 2:
        files["pareto"] = plot_pareto(frame, names, directions, params, folder / "pareto.png", name)
    log("wrote " + ", ".join(str(p) for p in files.values()))
    return SweepReport(name, frame, best, files)


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def plot_history(frame: pd.DataFrame, names: list[str], directions: list[str], path: Path, title: str) -> Path:
    """Each objective per trial (complete dots, pruned crosses) with the running best."""
    fig = _figure(6.4, 2.9 * len(names))
    for i, (metric, direction) in enumerate(zip(names, directions)):
        ax = fig.add_subplot(len(names), 1, i + 1)
        done = frame[frame.state == "complete"].sort_values("trial")
        pruned = frame[frame.state == "pruned"]
        ax.scatter(done.trial, done[metric], s=22, color="tab:blue", label="complete", zorder=3)
        if len(pruned):
            ax.scatter(pruned.trial, pruned[metric], marker="x", color="0.55", label="pruned (last report)")
        if len(done):
            run = done[metric].cummin() if direction == "minimize" else done[metric].cummax()
            ax.step(done.trial, run, where="post", color="tab:red", label=f"best so far ({direction})")
        ax.set_xlabel("trial")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{title}: optimisation history")
    write_atomic(path, lambda fh: fig.savefig(fh, format="png"), "wb")  # disk full: one line
    return path


def plot_params(frame: pd.DataFrame, study: optuna.Study, params: list[str], metric: str, path: Path, title: str) -> Path:
    """The objective against each searched parameter (log axis where the space is log)."""
    fig = _figure(max(6.0, 4.2 * len(params)), 3.8)
    done = frame[frame.state == "complete"]
    dists = {k: d for t in study.get_trials(deepcopy=False) for k, d in t.distributions.items()}
    for i, key in enumerate(params):
        ax = fig.add_subplot(1, len(params), i + 1)
        ax.scatter(done[key], done[metric], c=done.trial, cmap="viridis", s=24)
        if getattr(dists.get(key), "log", False):
            ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{title}: {metric} per parameter\n(colour: trial number, later = yellow)", fontsize=10)
    write_atomic(path, lambda fh: fig.savefig(fh, format="png"), "wb")  # disk full: one line
    return path


def plot_pareto(frame: pd.DataFrame, names: list[str], directions: list[str], params: list[str],
                path: Path, title: str) -> Path:
    """Every complete trial in objective space, the Pareto front joined, colour = first parameter."""
    from matplotlib.colors import LogNorm

    fig = _figure(6.4, 4.8)
    ax = fig.add_subplot()
    done = frame[frame.state == "complete"]
    x, y = names
    if len(done):
        colour = done[params[0]] if params else done.trial
        positive = params and (colour > 0).all() and colour.max() / max(colour.min(), 1e-300) > 20
        sc = ax.scatter(done[x], done[y], c=colour, cmap="viridis", s=30, norm=LogNorm() if positive else None,
                        label="trials", zorder=2)
        fig.colorbar(sc, ax=ax, label=params[0] if params else "trial")
        front = done[done.on_front].sort_values(x)
        # The front as the boundary of what it dominates: a staircase, not a line (nothing in between is attained).
        ax.step(front[x], front[y], where="post" if directions[0] == "minimize" else "pre", color="tab:red",
                lw=1.2, zorder=3)
        ax.plot(front[x], front[y], "o", color="tab:red", mfc="none", ms=10, label="Pareto front", zorder=3)
        for _, r in front.iterrows():
            ax.annotate(str(int(r.trial)), (r[x], r[y]), textcoords="offset points", xytext=(5, 5), fontsize=7)
    ax.set_xlabel(f"{x} ({'lower' if directions[0] == 'minimize' else 'higher'} is better)")
    ax.set_ylabel(f"{y} ({'lower' if directions[1] == 'minimize' else 'higher'} is better)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{title}: Pareto front")
    write_atomic(path, lambda fh: fig.savefig(fh, format="png"), "wb")  # disk full: one line
    return path
