"""Suites: named lists of runs sharing a recipe (``suites:`` in ``registry.yaml``).

A suite is a dataset, a list of quantizers, seeds and ``key=value`` overrides (and, under
``tuned:``, a quantizer's own overrides: what its sweep chose); each quantizer × seed is
one ``fit``. A run whose config hash already has a finished row in
the results folder is skipped, so a suite that was killed resumes where it stopped (the
run that was cut off has no row and starts over). A run that diverges gets a ``failed``
row and the suite goes on; the next invocation does not retry it (its run folder says
``failed``): change its configuration or delete the folder.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from omegaconf import DictConfig, OmegaConf

from ..config import config_hash, resolve_config
from ..errors import UserError, suggest
from ..registry import registry_suites


@dataclass
class PlannedRun:
    quantizer: str
    seed: int
    config: DictConfig
    config_hash: str


@dataclass
class SuiteReport:
    name: str
    finished: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def list_suites() -> dict[str, dict[str, Any]]:
    return registry_suites()


def suite_spec(name: str) -> dict[str, Any]:
    suites = list_suites()
    if name not in suites:
        raise UserError(f"unknown suite {name!r}{suggest(name, suites)}")
    spec = dict(suites[name])
    if not spec.get("quantizers"):
        raise UserError(f"suite {name!r} in registry.yaml lists no quantizers")
    return spec


def plan_suite(name: str, overrides: list[str] | None = None, seeds: list[int] | None = None,
               quantizers: list[str] | None = None) -> list[PlannedRun]:
    """The suite's runs, fully resolved and validated before anything trains.

    ``overrides`` apply on top of the suite's own (e.g. ``results=DIR``, ``out=DIR``);
    ``seeds``/``quantizers`` replace or narrow the suite's lists.
    """
    spec = suite_spec(name)
    names = list(spec["quantizers"])
    if quantizers:
        unknown = [q for q in quantizers if q not in names]
        if unknown:
            raise UserError(f"suite {name!r} has no quantizer {unknown[0]!r}{suggest(unknown[0], names)}")
        names = [q for q in names if q in quantizers]
    tuned = spec.get("tuned") or {}  # quantizer -> its own overrides (a sweep's choice)
    stray = [q for q in tuned if q not in spec["quantizers"]] if isinstance(tuned, dict) else [tuned]
    if stray:
        raise UserError(f"suite {name!r}: tuned must map the suite's quantizers to KEY=VALUE lists, got {stray[0]!r}")
    plan = []
    for seed in seeds if seeds is not None else spec.get("seeds", [0]):
        for quantizer in names:
            cfg = resolve_config(quantizer, spec.get("dataset"), spec.get("model"),
                                 [*(spec.get("overrides") or []), *(tuned.get(quantizer) or []),
                                  f"seed={int(seed)}", *(overrides or [])])
            plan.append(PlannedRun(quantizer, int(seed), cfg, config_hash(cfg)))
    return plan


def suite_hashes(name: str, overrides: list[str] | None = None, extra_seeds: Iterable[int] = ()) -> set[str]:
    """Config hashes of a suite's runs, with ``extra_seeds`` beside its own (runs made with
    ``--seeds``): how the tables pick the suite's rows."""
    seeds = sorted({*suite_spec(name).get("seeds", [0]), *(int(s) for s in extra_seeds)})
    return {run.config_hash for run in plan_suite(name, overrides, seeds)}


def run_suite(name: str, overrides: list[str] | None = None, seeds: list[int] | None = None,
              quantizers: list[str] | None = None, log: Callable[[str], None] | None = None,
              fit_log: Callable[[str], None] | None = None) -> SuiteReport:
    """Run every planned run of suite ``name`` that has no finished row yet."""
    from ..data import load_dataset
    from ..rows import append_row, finished_hashes
    from ..training import DivergenceError, fit

    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    plan = plan_suite(name, overrides, seeds, quantizers)
    report = SuiteReport(name)
    if not plan[0].config.get("results"):
        raise UserError("a suite needs a results folder to know what is done; drop results=null")
    cache: dict[str, Any] = {}  # runs of one recipe share their data: load (decode) it once
    for i, run in enumerate(plan, 1):
        label = f"[{i}/{len(plan)}] {run.quantizer} seed {run.seed} ({run.config_hash})"
        if run.config_hash in finished_hashes(run.config.results):
            log(f"{label}: already in {run.config.results}, skipped")
            report.skipped.append(run.config_hash)
            continue
        log(f"{label}: training")
        key = json.dumps(OmegaConf.to_container(run.config.data), sort_keys=True)
        if key not in cache:
            cache.clear()
            cache[key] = load_dataset(run.config.data)
        try:
            result = fit(run.config, data=cache[key], log=fit_log)
        except DivergenceError as exc:
            log(f"{label}: failed: {exc}")
            # The trainer's failed summary names the run; a row needs the split sizes too.
            append_row(run.config.results, run.config, {"train_images": None, "test_images": None, **exc.summary},
                       status="failed", error=str(exc))
            report.failed.append(run.config_hash)
            continue
        s = result.summary
        log(f"{label}: mse {s['mse']:.5f}  perplexity {s['perplexity']:.1f}  {s['wall_s']:.0f} s")
        report.finished.append(run.config_hash)
    return report

