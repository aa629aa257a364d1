"""One registered quantizer: its entry (name -> class, defaults, citation, the paper's
numbers, where it came from) and its options. The options are the class's constructor
keywords: the defaults come from the signature, the registry's and the user's values are
checked against it (an unknown key says "did you mean", a wrong type says so) before
anything is built."""
from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field
from typing import Any

from quantizers.base import Quantizer

from .errors import UserError, suggest


@dataclass
class QuantizerEntry:
    name: str
    target: str | type  # "module:Class" or the class itself
    defaults: dict[str, Any] = field(default_factory=dict)
    citation: str = ""
    table1_row: str | None = None
    paper: dict[str, dict[str, float]] = field(default_factory=dict)
    source: str = "builtin"  # for people: "builtin", "entry point DIST VERSION", "YAML file PATH", ...
    origin: dict[str, Any] = field(default_factory=lambda: {"kind": "builtin"})  # the same, for machines

    @property
    def target_name(self) -> str:
        """``module:Class`` whether or not the class has been imported yet."""
        return self.target if isinstance(self.target, str) else f"{self.target.__module__}:{self.target.__qualname__}"

    def load_class(self) -> type:
        if isinstance(self.target, type):
            return self.target
        module_name, _, attr = self.target.partition(":")
        try:
            obj = importlib.import_module(module_name)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError) as exc:
            raise UserError(f"quantizer {self.name!r} ({self.source}) cannot load {self.target}: {exc}") from exc
        if not (isinstance(obj, type) and issubclass(obj, Quantizer)):
            raise UserError(f"quantizer {self.name!r}: {self.target} is not a Quantizer subclass")
        self.target = obj
        return obj

    def options(self, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        """Constructor defaults ← registry defaults ← ``overrides``, checked and typed."""
        return merge_options(self.name, self.load_class(), self.defaults, overrides or {})


def constructor_defaults(cls: type) -> dict[str, Any]:
    """Keyword parameters of ``cls.__init__`` with their defaults (``inspect.Parameter.empty`` if none)."""
    params = inspect.signature(cls.__init__).parameters
    return {n: p.default for n, p in params.items()
            if n != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def coerce_value(qname: str, key: str, value: Any, default: Any) -> Any:
    """Bring a config value to the type of the constructor default, or say why not."""
    if default is inspect.Parameter.empty or default is None or value is None:
        return value
    kind = type(default)
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(value, kind):
        return value
    elif kind is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return value  # "auto" or a number (GM-VQ precision_init, SQ-VAE log_var_init): the class checks
    raise UserError(f"quantizer {qname!r}: {key} must be a {kind.__name__}, got {value!r}")


def merge_options(name: str, cls: type, *sources: dict[str, Any]) -> dict[str, Any]:
    """``cls``'s constructor defaults ← each of ``sources`` in turn, every key known and typed."""
    signature = constructor_defaults(cls)
    merged = {k: v for k, v in signature.items() if v is not inspect.Parameter.empty}
    for source in sources:
        for key, value in source.items():
            if key not in signature:
                raise UserError(
                    f"quantizer {name!r} has no option {key!r}{suggest(key, signature)}"
                )
            merged[key] = coerce_value(name, key, value, signature[key])
    return merged
