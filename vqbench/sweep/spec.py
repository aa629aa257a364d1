"""``sweeps/NAME.yaml``: one Optuna sweep — base run, search space, objectives, sampler, pruner, budget.

The paper tunes GM-VQ by fixing β = 1 and choosing the best γ, and GM-VQ + Entropy with
β > 1 at a fixed γ (§5.1, Fig. 4); ``gamma``, ``beta`` and ``gamma-beta`` ship as files.
Every key is checked on load; a mistake names the file, the key and what would be right.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig

from ..config import resolve_config
from ..errors import UserError, suggest

PACKAGE_SWEEPS = Path(__file__).resolve().parents[1] / "sweeps"  # vqbench/sweeps
TOP_KEYS = ("description", "base", "space", "objectives", "sampler", "pruner", "n_trials")
BASE_KEYS = ("quantizer", "dataset", "model", "overrides")
PARAM_TYPES = ("float", "int", "categorical")
METRICS = ("mse", "perplexity", "code_perplexity", "codes_used")  # fit's summary / per-epoch record
VALIDATION = 0.1  # the share of the training images a sweep holds out to evaluate its trials
SAMPLERS = ("tpe", "random", "nsga2", "qmc", "grid")  # grid: every combination of categorical choices
PRUNERS = ("median", "percentile", "successive-halving", "hyperband", "none")


@dataclass(frozen=True)
class Param:
    """One searched (or fixed) config key, e.g. ``quantizer.gamma`` log-uniform in [1e-4, 1]."""

    key: str
    type: str  # float | int | categorical | fixed
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple | None = None
    value: Any = None  # type == fixed

    def probe(self) -> Any:
        """A value inside the space, to check the key resolves before anything runs."""
        if self.type == "fixed":
            return self.value
        if self.type == "categorical":
            return self.choices[0]
        mid = math.sqrt(self.low * self.high) if self.log else (self.low + self.high) / 2
        return int(round(mid)) if self.type == "int" else mid


def grid_points(params: tuple[Param, ...]) -> int:
    """How many trials a grid sampler has: every combination of the searched keys' choices."""
    return math.prod(len(p.choices) for p in params if p.type == "categorical")


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
    params = tuple(_parse_param(str(k), v, bad) for k, v in space.items())
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


def _parse_param(key: str, value: Any, bad) -> Param:
    where = f"space.{key}"
    if not isinstance(value, dict):
        if isinstance(value, (int, float, str, bool)) or value is None:
            return Param(key, "fixed", value=value)
        raise bad(where, "must be a value (fixed) or a mapping with type and a range or choices")
    kind = value.get("type", "categorical" if "choices" in value else "float")
    allowed = {"float": {"type", "low", "high", "log", "step"}, "int": {"type", "low", "high", "log", "step"},
               "categorical": {"type", "choices"}}
    if kind not in allowed:
        raise bad(f"{where}.type", f"must be one of {', '.join(PARAM_TYPES)}, got {kind!r}")
    for k in value:
        if k not in allowed[kind]:
            raise bad(f"{where}.{k}", f"is not a key of a {kind} parameter; use {', '.join(sorted(allowed[kind]))}")
    if kind == "categorical":
        choices = value.get("choices")
        if not isinstance(choices, list) or not choices:
            raise bad(f"{where}.choices", "must be a non-empty list")
        return Param(key, kind, choices=tuple(choices))
    for k in ("low", "high"):
        v = value.get(k)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise bad(f"{where}.{k}", f"is required and must be a finite number, got {v!r}")
        if kind == "int" and not float(v).is_integer():
            raise bad(f"{where}.{k}", f"must be an integer for an int parameter, got {v!r}")
    low, high, log = value["low"], value["high"], bool(value.get("log", False))
    if not low < high:
        raise bad(where, f"low ({low}) must be below high ({high}); to fix a value write `{key}: VALUE`")
    if log and low <= 0:
        raise bad(f"{where}.low", f"must be > 0 on a log scale, got {low}")
    step = value.get("step")
    if step is not None and (log or not isinstance(step, (int, float)) or step <= 0):
        raise bad(f"{where}.step", "must be a number > 0 and cannot be combined with log: true")
    cast = int if kind == "int" else (lambda v: v)
    return Param(key, kind, low=cast(low), high=cast(high), log=log, step=step)


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
