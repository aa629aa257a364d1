"""``sweep(spec)``: Optuna tunes a sweep's search space with ``fit``; resumable, many workers.

Each trial is one ordinary run folder (``OUT/runs/STUDY/trial-NNNN``), linked to its trial
through user attrs (``run_dir``) and back (``sweep_trial.json`` in the folder). Workers on
this machine (``workers=N``) or on others (same ``storage`` URL) share one study;
``n_trials`` is the study's total, never per process (see :mod:`vqbench.sweep_storage`).
Single-objective sweeps report the first objective after every epoch so the pruner can
stop a poor trial early (``fit``'s ``on_epoch`` raises ``optuna.TrialPruned``).
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import optuna
from omegaconf import OmegaConf

from .config import config_hash
from .errors import UserError, exception_line, first_line
from .runio import write_json_atomic
from .sweep_report import report, trials_dataframe  # noqa: F401  (public API of this module)
from .sweep_spec import Param, SweepSpec, available_sweeps, load_sweep  # noqa: F401
from .sweep_storage import (DEFAULT_OUT, FAILURE, StudyLock, budget, default_storage, default_study_name,
                            make_storage, recover_lost_trials, redact, worker_identity)

__all__ = ["SweepResult", "SweepSpec", "available_sweeps", "load_sweep", "open_study", "report", "run_worker",
           "sweep", "trials_dataframe"]


@dataclass
class SweepResult:
    study_name: str
    storage: str
    counts: dict[str, int]  # trials by state, and "used" (what counts against n_trials)
    requeued: list[int]  # lost trials re-queued when the study was opened
    worker_exit_codes: list[int]


def sweep(spec: SweepSpec, *, storage: str | None = None, study_name: str | None = None,
          out: str | Path = DEFAULT_OUT, workers: int = 1, n_trials: int | None = None,
          log: Callable[[str], None] | None = None) -> SweepResult:
    """Run (or resume, or join) the sweep's study until it holds ``n_trials`` trials in total."""
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    if workers < 1:
        raise UserError(f"--workers must be ≥ 1, got {workers}")
    n_trials = spec.n_trials if n_trials is None else n_trials
    if n_trials < 1:
        raise UserError(f"--n-trials must be ≥ 1, got {n_trials}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own lines instead of Optuna's INFO
    url = storage or default_storage(out)
    name = study_name or default_study_name(spec)
    base = spec.base_config()  # every key and value checked before any worker starts
    study, requeued = open_study(spec, url, name, base_hash=config_hash(base))
    before = budget(study)
    if before["used"] >= n_trials:
        log(f"study {name!r} already holds {before['used']} of {n_trials} trials; nothing to run "
            f"(raise --n-trials to run more)")
        return SweepResult(name, url, before, requeued, [])
    log(f"study {name!r} in {redact(url)}: {before['used']} of {n_trials} trials done or running; "
        f"{workers} worker(s)" + (f"; re-queued lost trials {requeued}" if requeued else ""))
    job = dict(spec=spec, url=url, study_name=name, n_trials=n_trials, out=str(out),
               threads=max(1, (os.cpu_count() or 1) // workers))
    if workers == 1:
        codes = [run_worker(worker_index=0, log=log, **job)]
    else:
        ctx = mp.get_context("spawn")  # no fork after torch has started its thread pools
        procs = [ctx.Process(target=_worker_main, kwargs=dict(job, worker_index=i), name=f"vqbench-sweep-{i}")
                 for i in range(workers)]
        for p in procs:
            p.start()
        try:
            for p in procs:
                p.join()
        except KeyboardInterrupt:
            for p in procs:
                p.join(timeout=30)
            raise
        codes = [p.exitcode for p in procs]
    after = budget(optuna.load_study(study_name=name, storage=make_storage(url)))
    return SweepResult(name, url, after, requeued, codes)


def open_study(spec: SweepSpec, url: str, name: str, base_hash: str) -> tuple[optuna.Study, list[int]]:
    """Create or load the study; refuse one made by another sweep or base run; re-queue lost trials."""
    storage = make_storage(url)
    with StudyLock(storage, url, name):
        try:
            study = optuna.create_study(storage=storage, study_name=name, directions=spec.directions,
                                        load_if_exists=True)
        except Exception as exc:
            raise UserError(f"cannot open study {name!r} in {redact(url)}: {first_line(exc)}") from exc
        identity = {"sweep": spec.name, "base_config_hash": base_hash,
                    "space": [p.__dict__ | {"choices": list(p.choices or [])} for p in spec.space],
                    "objectives": [o.__dict__ for o in spec.objectives]}
        attrs = study.user_attrs
        if not attrs:
            for key, value in identity.items():
                study.set_user_attr(key, value)
            study.set_user_attr("base_config", OmegaConf.to_container(spec.base_config()))
        else:
            for key, value in identity.items():
                if json.dumps(attrs.get(key), sort_keys=True) != json.dumps(value, sort_keys=True):
                    raise UserError(f"study {name!r} in {redact(url)} was made with a different {key.replace('_', ' ')} "
                                    f"(sweep {attrs.get('sweep')!r}); pass --study NEW_NAME for a new study, "
                                    "or the same sweep, --dataset and overrides to resume it")
        if [d.name.lower() for d in study.directions] != spec.directions:
            raise UserError(f"study {name!r} optimises {[d.name.lower() for d in study.directions]}, "
                            f"the sweep {spec.directions}; pass --study NEW_NAME")
        requeued = recover_lost_trials(study)
    return study, requeued


def make_sampler(spec: SweepSpec, seed: int) -> optuna.samplers.BaseSampler:
    cfg = spec.sampler
    options = dict(cfg.get("options") or {})
    cls = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler,
           "nsga2": optuna.samplers.NSGAIISampler, "qmc": optuna.samplers.QMCSampler}[cfg["name"]]
    if cfg["name"] == "tpe" and len(spec.objectives) == 1:
        options.setdefault("multivariate", len(spec.searched) > 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return cls(seed=seed, **options)
    except TypeError as exc:
        raise UserError(f"{spec.path}: sampler.options: {exc}") from exc


def make_pruner(spec: SweepSpec) -> optuna.pruners.BasePruner:
    if spec.pruner is None:
        return optuna.pruners.NopPruner()
    cls = {"median": optuna.pruners.MedianPruner, "percentile": optuna.pruners.PercentilePruner,
           "successive-halving": optuna.pruners.SuccessiveHalvingPruner,
           "hyperband": optuna.pruners.HyperbandPruner}[spec.pruner["name"]]
    try:
        return cls(**(spec.pruner.get("options") or {}))
    except (TypeError, ValueError) as exc:
        raise UserError(f"{spec.path}: pruner.options: {exc}") from exc


def worker_seed(spec: SweepSpec, worker_index: int) -> int:
    """Its own sampler seed per worker: the sweep's seed, the worker index, host and pid mixed,
    so two workers (on one machine or two) never draw the same random start-up points."""
    import numpy as np
    import socket
    import zlib

    entropy = [int(spec.sampler.get("seed", 0)), worker_index, os.getpid(), zlib.crc32(socket.gethostname().encode())]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def _worker_main(**job: Any) -> None:
    from .cli import _one_line_warning

    warnings.formatwarning = _one_line_warning  # as in the parent process (cli.main)
    try:
        code = run_worker(**job)
    except UserError as exc:
        print(f"vqbench: error: {exc}", file=sys.stderr, flush=True)
        code = 2
    except KeyboardInterrupt:
        code = 130
    except Exception as exc:  # e.g. the storage went away: one line, the other workers go on
        print(f"vqbench: sweep worker {job.get('worker_index')} stopped: "
              f"{exception_line(exc)}", file=sys.stderr, flush=True)
        code = 1
    sys.exit(code)


def run_worker(spec: SweepSpec, url: str, study_name: str, n_trials: int, out: str, worker_index: int,
               threads: int | None = None, log: Callable[[str], None] | None = None) -> int:
    """One worker: take trials under the study lock until the study holds ``n_trials``."""
    import torch

    from .data import load_dataset

    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    if threads:
        torch.set_num_threads(threads)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # our own line per trial instead
    storage = make_storage(url)
    seed = worker_seed(spec, worker_index)
    study = optuna.load_study(study_name=study_name, storage=storage,
                              sampler=make_sampler(spec, seed), pruner=make_pruner(spec))
    data_cache: dict[str, Any] = {}
    lock = StudyLock(storage, url, study_name)
    objective = TrialObjective(spec, study_name, Path(out), worker_index, seed, lock, data_cache, load_dataset, log)
    while True:
        lock.acquire()
        try:
            if budget(study)["used"] >= n_trials:
                break
            # The objective releases the lock once its trial exists: creation is serialised.
            study.optimize(objective, n_trials=1, catch=(Exception,))
        finally:
            lock.release()
    return 0


class TrialObjective:
    """One trial: sample the space, build the run config, ``fit`` it, return the objective(s)."""

    def __init__(self, spec: SweepSpec, study_name: str, out: Path, worker_index: int, seed: int,
                 lock: StudyLock, data_cache: dict, load_dataset: Callable, log: Callable[[str], None]) -> None:
        self.spec, self.study_name, self.out, self.worker_index, self.seed = spec, study_name, out, worker_index, seed
        self.lock, self.data_cache, self.load_dataset, self.log = lock, data_cache, load_dataset, log

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, ...]:
        from .runner import fit

        self.lock.release()
        for key, value in {**worker_identity(), "worker_index": self.worker_index, "sampler_seed": self.seed}.items():
            trial.set_user_attr(key, value)
        params = {p.key: suggest_param(trial, p) for p in self.spec.searched}
        run_dir = self.out / "runs" / self.study_name / f"trial-{trial.number:04d}"
        started = time.perf_counter()
        try:
            cfg = self.spec.run_config(params, [f"out={run_dir.parent}", f"name={run_dir.name}"])
            trial.set_user_attr("run_dir", str(run_dir))
            run_dir.mkdir(parents=True, exist_ok=True)
            write_json_atomic(run_dir / "sweep_trial.json", {"study": self.study_name, "sweep": self.spec.name,
                                                             "trial": trial.number, "params": params})
            key = json.dumps(OmegaConf.to_container(cfg.data), sort_keys=True)
            if key not in self.data_cache:
                self.data_cache[key] = self.load_dataset(cfg.data)
            on_epoch = self._reporter(trial) if len(self.spec.objectives) == 1 else None
            result = fit(cfg, data=self.data_cache[key], log=lambda line: None, on_epoch=on_epoch)
        except optuna.TrialPruned as exc:
            self.log(f"[worker {self.worker_index}] trial {trial.number} {_fmt(params)}  {exc}")
            raise
        except Exception as exc:
            # Diverged or impossible settings are results (this point is bad): no retry, counts as done.
            trial.set_user_attr(FAILURE, exception_line(exc))
            self.log(f"[worker {self.worker_index}] trial {trial.number} {_fmt(params)}  failed: {exc}")
            raise
        s = result.summary
        for metric in ("mse", "perplexity", "code_perplexity", "codes_used", "wall_s"):
            trial.set_user_attr(metric, s[metric])
        values = tuple(float(s[o.metric]) for o in self.spec.objectives)
        self.log(f"[worker {self.worker_index}] trial {trial.number} {_fmt(params)}  "
                 + "  ".join(f"{o.metric} {v:.6g}" for o, v in zip(self.spec.objectives, values))
                 + f"  ({time.perf_counter() - started:.1f} s)")
        return values[0] if len(values) == 1 else values

    def _reporter(self, trial: optuna.Trial) -> Callable[[dict], None]:
        metric = self.spec.objectives[0].metric

        def on_epoch(record: dict) -> None:
            trial.report(float(record[metric]), record["epoch"])
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {record['epoch']}")
        return on_epoch


def suggest_param(trial: optuna.Trial, p: Param) -> Any:
    if p.type == "float":
        return trial.suggest_float(p.key, p.low, p.high, log=p.log, step=p.step)
    if p.type == "int":
        return trial.suggest_int(p.key, p.low, p.high, log=p.log, step=int(p.step or 1))
    return trial.suggest_categorical(p.key, list(p.choices))


def _fmt(params: dict[str, Any]) -> str:
    return " ".join(f"{k.rsplit('.', 1)[-1]}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
