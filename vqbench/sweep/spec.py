"""``sweeps/NAME.yaml``: one Optuna sweep — base run, search space, objectives, sampler, pruner, budget.

The paper tunes GM-VQ by fixing β = 1 and choosing the best γ, and GM-VQ + Entropy with
β > 1 at a fixed γ (§5.1, Fig. 4); ``gamma``, ``beta`` and ``gamma-beta`` ship as files.
Every key is checked on load; a mistake names the file, the key and what would be right.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig

from ..config import resolve_config
from ..errors import UserError, suggest
from .space import Param, grid_points, parse_param

PACKAGE_SWEEPS = Path(__file__).resolve().parents[1] / "sweeps"  # vqbench/sweeps
TOP_KEYS = ("description", "base", "space", "objectives", "sampler", "pruner", "n_trials")
BASE_KEYS = ("quantizer", "dataset", "model", "overrides")
METRICS = ("mse", "perplexity", "code_perplexity", "codes_used")  # fit's summary / per-epoch record
VALIDATION = 0.1  # the share of the training images a sweep holds out to evaluate its trials
SAMPLERS = ("tpe", "random", "nsga2", "qmc", "grid")  # grid: every combination of categorical choices
PRUNERS = ("median", "percentile", "successive-halving", "hyperband", "none")


@dataclass(frozen=True)
class Objective:
    metric: str
    direction: str  # minimize | maximize


@dataclass(frozen=True)
class SweepSpec:
    name: str
    path: Path
    description: str
    quantizer: str
    dataset: str
    model: str | None
    overrides: tuple[str, ...]
    space: tuple[Param, ...]
    objectives: tuple[Objective, ...]
    sampler: dict = field(default_factory=dict)
    pruner: dict | None = None
    n_trials: int = 20

    @property
    def directions(self) -> list[str]:
        return [o.direction for o in self.objectives]

    @property
    def searched(self) -> tuple[Param, ...]:
        return tuple(p for p in self.space if p.type != "fixed")

    def with_base(self, dataset: str | None = None, overrides: list[str] | tuple = ()) -> "SweepSpec":
        """The same sweep on another dataset and/or with extra ``key=value`` overrides."""
        return replace(self, dataset=dataset or self.dataset, overrides=self.overrides + tuple(overrides))

    def run_config(self, params: dict[str, Any], extra: list[str] | tuple = ()) -> DictConfig:
        """One trial's resolved run config: base ← overrides ← fixed and sampled params ← extra;
        evaluated on held-out training images (data.validation), never on the test split."""
        values = {p.key: p.value for p in self.space if p.type == "fixed"} | params
        dotlist = ([f"data.validation={VALIDATION}", *self.overrides]
                   + [f"{k}={_yaml_scalar(v)}" for k, v in values.items()] + list(extra))
        cfg = resolve_config(self.quantizer, self.dataset, self.model, dotlist)
        if cfg.data.validation is None:
            raise UserError(f"sweep {self.name}: data.validation=null would tune on the test split; "
                            f"sweeps hold out training images (a fraction, e.g. {VALIDATION}, or a count)")
        return cfg

    def base_config(self) -> DictConfig:
        """The run config at a probe point of the space; raises UserError on a bad key or value."""
        return self.run_config({p.key: p.probe() for p in self.searched})


def _yaml_scalar(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def available_sweeps() -> dict[str, Path]:
    """Sweep name -> file: ``./sweeps/*.yaml`` (your own) over the installed ones."""
    found = {p.stem: p for p in sorted(PACKAGE_SWEEPS.glob("*.yaml"))}
    local = Path("sweeps")
    if local.is_dir() and local.resolve() != PACKAGE_SWEEPS.resolve():
        found.update({p.stem: p for p in sorted(local.glob("*.yaml"))})
    return found


def load_sweep(name_or_path: str | Path) -> SweepSpec:
    """A sweep by name (``gamma``) or by path to its YAML file, fully validated."""
    text = str(name_or_path)
    path = Path(text).expanduser()
    if not (text.endswith((".yaml", ".yml")) or "/" in text):
        known = available_sweeps()
        if text not in known:
            raise UserError(f"unknown sweep {text!r}{suggest(text, known)} "
                            f"(or pass the path of a sweep YAML file)")
        path = known[text]
    if not path.is_file():
        raise UserError(f"sweep file {path} does not exist")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from exc
    return parse_sweep(doc, path)


def parse_sweep(doc: Any, path: Path) -> SweepSpec:
    def bad(key: str, why: str) -> UserError:
        return UserError(f"{path}: {key}: {why}")

    if not isinstance(doc, dict):
        raise bad("(top level)", "must be a mapping with keys " + ", ".join(TOP_KEYS))
    for key in doc:
        if key not in TOP_KEYS:
            raise bad(str(key), f"unknown key{suggest(str(key), TOP_KEYS)}")
    for key in ("base", "space", "objectives"):
        if key not in doc:
            raise bad(key, "is required")
    base = doc["base"]
    if not isinstance(base, dict):
        raise bad("base", "must be a mapping with quantizer, dataset, model, overrides")
    for key in base:
        if key not in BASE_KEYS:
            raise bad(f"base.{key}", f"unknown key{suggest(str(key), BASE_KEYS)}")
    if not isinstance(base.get("quantizer"), str):
        raise bad("base.quantizer", "is required: a registered quantizer name (see `vqbench list`)")
    overrides = base.get("overrides") or []
    if not isinstance(overrides, list) or not all(isinstance(o, str) and "=" in o for o in overrides):
        raise bad("base.overrides", "must be a list of KEY=VALUE strings, e.g. [quantizer.beta=1.0]")

    space = doc["space"]
    if not isinstance(space, dict) or not space:
        raise bad("space", "must map config keys to ranges, e.g. quantizer.gamma: {type: float, low: 1e-4, high: 1, log: true}")
    params = tuple(parse_param(str(k), v, bad) for k, v in space.items())
    if not any(p.type != "fixed" for p in params):
        raise bad("space", "fixes every key; give at least one a range or choices")

    objectives = [doc["objectives"]] if isinstance(doc["objectives"], dict) else doc["objectives"]
    if not isinstance(objectives, list) or not objectives:
        raise bad("objectives", "must be a list like [{metric: mse, direction: minimize}]")
    parsed = []
    for i, o in enumerate(objectives):
        if not isinstance(o, dict) or set(o) != {"metric", "direction"}:
            raise bad(f"objectives[{i}]", "must be {metric: NAME, direction: minimize|maximize}")
        if o["metric"] not in METRICS:
            raise bad(f"objectives[{i}].metric", f"unknown metric {o['metric']!r}{suggest(str(o['metric']), METRICS)}")
        if o["direction"] not in ("minimize", "maximize"):
            raise bad(f"objectives[{i}].direction", f"must be minimize or maximize, got {o['direction']!r}")
        parsed.append(Objective(o["metric"], o["direction"]))
    if len({o.metric for o in parsed}) != len(parsed):
        raise bad("objectives", "names a metric twice")

    sampler = doc.get("sampler") or {"name": "tpe"}
    _check_named(sampler, "sampler", SAMPLERS, bad)
    pruner = doc.get("pruner")
    if pruner is not None:
        _check_named(pruner, "pruner", PRUNERS, bad)
        if pruner["name"] == "none":
            pruner = None
    if pruner is not None and len(parsed) > 1:
        raise bad("pruner", "Optuna cannot prune a multi-objective study; remove the pruner")
    grid_size = None
    if sampler["name"] == "grid":
        if any(p.type not in ("categorical", "fixed") for p in params):
            raise bad("sampler", "grid searches choices only: give every searched key {choices: [...]}")
        grid_size = grid_points(params)
    n_trials = doc.get("n_trials", grid_size or 20)
    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
        raise bad("n_trials", f"must be an integer ≥ 1, got {n_trials!r}")
    if grid_size is not None and n_trials > grid_size:
        raise bad("n_trials", f"is {n_trials} but the grid has {grid_size} points; give at most {grid_size}")
    return SweepSpec(
        name=path.stem, path=path, description=str(doc.get("description", "")),
        quantizer=base["quantizer"], dataset=str(base.get("dataset", "cifar10")), model=base.get("model"),
        overrides=tuple(overrides), space=params, objectives=tuple(parsed),
        sampler=sampler, pruner=pruner, n_trials=n_trials)


def _check_named(section: Any, key: str, names: tuple[str, ...], bad) -> None:
    if not isinstance(section, dict) or "name" not in section:
        raise bad(key, f"must be a mapping with name ({', '.join(names)}) and optional options")
    for k in section:
        if k not in ("name", "seed", "options"):
            raise bad(f"{key}.{k}", f"unknown key{suggest(str(k), ('name', 'seed', 'options'))}")
    if section["name"] not in names:
        raise bad(f"{key}.name", f"unknown {key} {section['name']!r}{suggest(str(section['name']), names)}")
    if not isinstance(section.get("options", {}) or {}, dict):
        raise bad(f"{key}.options", "must be a mapping of keyword arguments")
    if "seed" in section and (isinstance(section["seed"], bool) or not isinstance(section["seed"], int)):
        raise bad(f"{key}.seed", f"must be an integer, got {section['seed']!r}")
