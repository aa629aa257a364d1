"""A sweep worker: it takes trials under the study lock until the study holds ``n_trials``.

Each trial is one ordinary run folder (``OUT/runs/STUDY/trial-NNNN``), linked to its trial
through user attrs (``run_dir``) and back (``sweep_trial.json`` in the folder). Each worker
has its own sampler seed. Single-objective sweeps report the first objective after every
epoch so the pruner can stop a poor trial early (``fit``'s ``on_epoch`` raises
``optuna.TrialPruned``).
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
import warnings
import _thread
from pathlib import Path
from typing import Any, Callable

import optuna
from omegaconf import OmegaConf

from ..errors import WRITE_ERRNOS, UserError, WriteFailed, exception_line, one_line_warning, print_error
from ..rundir import write_json_atomic
from .space import Param
from .spec import SweepSpec
from .rdb import StorageUnavailable, is_connection_error, lost_connection_line
from .storage import FAILURE, StudyLock, budget, make_storage, worker_identity


def make_sampler(spec: SweepSpec, seed: int) -> optuna.samplers.BaseSampler:
    cfg = spec.sampler
    options = dict(cfg.get("options") or {})
    # grid: the paper's procedure, the best value of a fixed list. Its points are enqueued as
    # waiting trials (study.enqueue_grid), each taken once; the sampler draws nothing.
    cls = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler,
           "nsga2": optuna.samplers.NSGAIISampler, "qmc": optuna.samplers.QMCSampler,
           "grid": optuna.samplers.RandomSampler}[cfg["name"]]
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


def stop_with_parent(parent_pid: int, poll_s: float = 1.0, grace_s: float = 30.0) -> threading.Thread:
    """Interrupt this worker once the sweep process that started it is gone. A parent killed
    by a signal its workers did not get (SIGTERM or SIGKILL to its pid alone) left them
    training on as orphans, holding their trials and cores, writing to the study. The
    interrupt fails the running trial (a later sweep re-queues it); if the worker has not
    exited ``grace_s`` later, it is ended."""
    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(poll_s)
        print(f"vqbench: sweep worker {os.getpid()} stopping: its sweep process {parent_pid} is gone",
              file=sys.stderr, flush=True)
        _thread.interrupt_main()
        time.sleep(grace_s)
        os._exit(1)

    thread = threading.Thread(target=watch, name="vqbench-parent-watch", daemon=True)
    thread.start()
    return thread


def worker_main(parent_pid: int | None = None, **job: Any) -> None:
    """A worker process of ``sweep(workers=N)``: ``run_worker``, its exit status a one-line
    report; it stops when ``parent_pid`` (the sweep process) is gone."""
    warnings.formatwarning = one_line_warning  # as in the parent process (cli.main)
    if parent_pid is not None:
        stop_with_parent(parent_pid)
    try:
        code = run_worker(**job)
    except UserError as exc:  # WriteFailed (disk full) and StorageUnavailable are exit 1
        print_error(str(exc))
        code = exc.exit_code
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

    from ..data import load_dataset

    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    if threads:
        torch.set_num_threads(threads)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # our own line per trial instead
    storage = make_storage(url)
    if hasattr(storage, "notify"):  # PatientRDBStorage: a line when the database goes away and comes back
        storage.notify = lambda line: log(f"[worker {worker_index}] {line}")
    seed = worker_seed(spec, worker_index)
    study = optuna.load_study(study_name=study_name, storage=storage,
                              sampler=make_sampler(spec, seed), pruner=make_pruner(spec))
    data_cache: dict[str, Any] = {}
    lock = StudyLock(storage, url, study_name)
    objective = TrialObjective(spec, study_name, Path(out), worker_index, seed, lock, data_cache, load_dataset, log)
    while objective.fatal is None:
        try:
            lock.acquire()
            try:
                if budget(study)["used"] >= n_trials:
                    break
                # The objective releases the lock once its trial exists: creation is serialised.
                study.optimize(objective, n_trials=1, catch=(Exception,))
            finally:
                lock.release()
        except Exception as exc:
            if getattr(storage, "gave_up", None) is not None:  # the one clear line, whatever Optuna
                raise storage.gave_up from exc  # raised on top (its tell after a failed trial)
            if not is_connection_error(exc):
                raise
            # Lost the database while holding the lock: the lock went with the session, so
            # count and create again under a new one (lock.acquire waits for the database).
            log(f"[worker {worker_index}] storage connection lost while holding the study lock "
                f"({lost_connection_line(exc)}); starting over")
    if objective.fatal is not None:
        raise objective.fatal  # the disk is full or the database is gone: stop, one line
    return 0


class TrialObjective:
    """One trial: sample the space, build the run config, ``fit`` it, return the objective(s)."""

    def __init__(self, spec: SweepSpec, study_name: str, out: Path, worker_index: int, seed: int,
                 lock: StudyLock, data_cache: dict, load_dataset: Callable, log: Callable[[str], None]) -> None:
        self.spec, self.study_name, self.out, self.worker_index, self.seed = spec, study_name, out, worker_index, seed
        self.lock, self.data_cache, self.load_dataset, self.log = lock, data_cache, load_dataset, log
        self.fatal: UserError | None = None  # a failure of the machine, not of the point: stops the worker

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, ...]:
        from ..training import fit

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
        except (WriteFailed, StorageUnavailable) as exc:
            # Not a result of these parameters: the trial fails without FAILURE, so it is re-queued.
            self.fatal = exc
            raise
        except Exception as exc:
            if isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS:  # e.g. the trial folder on a full disk
                self.fatal = WriteFailed(exc.filename or run_dir, exc)
                raise self.fatal from exc
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
