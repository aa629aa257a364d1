"""A sweep's search space: one searched (or fixed) config key per entry of ``space:``, each
checked on load with the file, the key and what would be right in the message."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

PARAM_TYPES = ("float", "int", "categorical")


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


def parse_param(key: str, value: Any, bad) -> Param:
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
