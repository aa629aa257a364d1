"""``sweep(spec)``: Optuna tunes a sweep's search space with ``fit``; resumable, many workers.

Workers on this machine (``workers=N``) or on others (same ``storage`` URL) share one
study; ``n_trials`` is the study's total, never per process (see :mod:`.storage`). A study
remembers the sweep, base run, space and objectives it was made with, and refuses another.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import optuna
from omegaconf import OmegaConf

from ..config import config_hash
from ..errors import UserError, first_line
from .space import grid_points
from .spec import SweepSpec
from .storage import (DEFAULT_OUT, StudyLock, budget, default_storage, default_study_name, make_storage,
                      recover_lost_trials, redact)
from .worker import run_worker, worker_main


@dataclass
class SweepResult:
    study_name: str
    storage: str
    counts: dict[str, int]  # trials by state, and "used" (what counts against n_trials)
    requeued: list[int]  # lost trials re-queued when the study was opened
    worker_exit_codes: list[int]


def enqueue_grid(study: optuna.Study, spec: SweepSpec, url: str, name: str) -> None:
    """Every grid point the study does not hold yet, as a waiting trial. Workers take waiting
    trials one each, so no point is tried twice; Optuna's GridSampler, left to pick among the
    unvisited points itself, handed one point to two workers (measured in test_study.py)."""
    import itertools

    keys = [p.key for p in spec.searched]
    with StudyLock(study._storage, url, name):
        held = {tuple((t.params or t.system_attrs.get("fixed_params", {})).get(k) for k in keys)
                for t in study.get_trials(deepcopy=False)}
        for point in itertools.product(*(p.choices for p in spec.searched)):
            if point not in held:
                study.enqueue_trial(dict(zip(keys, point)))


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
    if spec.sampler["name"] == "grid" and n_trials > grid_points(spec.space):
        raise UserError(f"--n-trials {n_trials} is more than the {grid_points(spec.space)} points of "
                        f"{spec.name}'s grid; give at most {grid_points(spec.space)}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own lines instead of Optuna's INFO
    url = storage or default_storage(out)
    name = study_name or default_study_name(spec)
    base = spec.base_config()  # every key and value checked before any worker starts
    study, requeued = open_study(spec, url, name, base_hash=config_hash(base))
    if spec.sampler["name"] == "grid":
        enqueue_grid(study, spec, url, name)
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
        procs = [ctx.Process(target=worker_main, kwargs=dict(job, worker_index=i, parent_pid=os.getpid()),
                             name=f"vqbench-sweep-{i}")
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
