"""One registry of quantizers, fed by three sources through one code path.

Sources: ``registry.yaml`` (built-ins and the paper's Table 1 numbers), user registry
YAML files (``--registry`` or ``VQBENCH_REGISTRY``), the ``vqbench.quantizers`` entry-point
group, and the :func:`register_quantizer` decorator. Entry points load lazily, on the first
lookup; one that fails to import is a warning, not a crash.
"""
from __future__ import annotations

import fnmatch
import inspect
import os
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import yaml

from quantizers.base import Quantizer

from .errors import UserError, exception_line, first_line, suggest
from .entry import QuantizerEntry

REGISTRY_YAML = Path(__file__).resolve().parent / "registry.yaml"
ENTRY_POINT_GROUP = "vqbench.quantizers"
REGISTRY_ENV = "VQBENCH_REGISTRY"


class PluginWarning(UserWarning):
    """A third-party quantizer could not be loaded; everything else still works."""


class PluginUnavailable(ImportError):
    """Raise at import of a plugin module whose optional dependency is missing.

    Its entries are then left out of :func:`list_quantizers` without a warning, and asking for
    one by name is a :class:`UserError` carrying this exception's message (say what to install).
    """


_QUANTIZERS: dict[str, QuantizerEntry] = {}
_UNAVAILABLE: dict[str, str] = {}  # name -> why (a plugin raised PluginUnavailable)
_YAML_CACHE: dict[str, Any] | None = None
_loaded = False
_loaded_files: set[Path] = set()
_SUITES: dict[str, dict[str, Any]] = {}  # suites: of registry YAML files (the built-in ones stay in the document)


def reset_registry() -> None:
    """Forget every registration; the next lookup reloads all sources (for tests)."""
    global _loaded
    _QUANTIZERS.clear()
    _UNAVAILABLE.clear()
    _loaded_files.clear()
    _SUITES.clear()
    _loaded = False


def registry_document() -> dict[str, Any]:
    """The parsed built-in ``registry.yaml`` (datasets, models, suites, quantizers)."""
    global _YAML_CACHE
    if _YAML_CACHE is None:
        _YAML_CACHE = yaml.safe_load(REGISTRY_YAML.read_text()) or {}
    return _YAML_CACHE


def _add(entry: QuantizerEntry) -> None:
    existing = _QUANTIZERS.get(entry.name)
    if existing is not None:
        # The very same registration arriving twice (a module imported again) is harmless;
        # the same class under other defaults is a different method and must not be shadowed.
        if existing.target_name == entry.target_name and existing.defaults == entry.defaults:
            return
        raise UserError(
            f"quantizer name {entry.name!r} is registered twice: by {existing.source} "
            f"({existing.target_name}) and by {entry.source} ({entry.target_name}); "
            "rename one of them or remove one source"
        )
    _QUANTIZERS[entry.name] = entry


def _entries_from_yaml(doc: dict[str, Any], source: str, origin: dict[str, Any]) -> list[QuantizerEntry]:
    entries = []
    for name, spec in (doc.get("quantizers") or {}).items():
        if not isinstance(spec, dict) or "class" not in spec:
            raise UserError(f"{source}: quantizer {name!r} needs a 'class: module:Class' entry")
        entries.append(QuantizerEntry(
            name=str(name), target=str(spec["class"]), defaults=dict(spec.get("defaults") or {}),
            citation=str(spec.get("citation", "")), table1_row=spec.get("table1_row"),
            paper=dict(spec.get("paper") or {}), source=source, origin=dict(origin),
        ))
    return entries


def add_registry_file(path: str | os.PathLike) -> None:
    """Register the ``quantizers:`` entries and ``suites:`` of a user YAML file (same shape as registry.yaml)."""
    path = Path(path).expanduser().resolve()
    if path in _loaded_files:
        return
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise UserError(f"cannot read registry file {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise UserError(f"registry file {path} is not valid YAML: {first_line(exc)}") from exc
    if not isinstance(doc, dict):
        raise UserError(f"registry file {path} must be a mapping with a 'quantizers:' key")
    if not isinstance(doc.get("quantizers") or {}, dict):
        raise UserError(f"registry file {path}: 'quantizers:' must map names to {{class: module:Class}}")
    entries = _entries_from_yaml(doc, f"YAML file {path}", {"kind": "yaml", "path": str(path)})
    suites = doc.get("suites") or {}
    if not isinstance(suites, dict) or not all(isinstance(v, dict) for v in suites.values()):
        raise UserError(f"registry file {path}: 'suites:' must map names to {{dataset: ..., quantizers: [...]}}")
    _ensure_loaded()
    taken = [str(n) for n in suites if str(n) in registry_suites()]
    if taken:
        raise UserError(f"registry file {path}: suite {taken[0]!r} is already defined; rename it")
    before = dict(_QUANTIZERS)
    try:
        for entry in entries:
            _add(entry)
    except UserError:
        _QUANTIZERS.clear()
        _QUANTIZERS.update(before)  # a file registers all of its entries or none
        raise
    _SUITES.update({str(name): dict(spec) for name, spec in suites.items()})
    _loaded_files.add(path)


def registry_suites() -> dict[str, dict[str, Any]]:
    """Every suite: registry.yaml's and those of registry YAML files (``--registry``, ``VQBENCH_REGISTRY``)."""
    _ensure_loaded()
    return {**(registry_document().get("suites") or {}), **_SUITES}


def _entry_points() -> list[metadata.EntryPoint]:
    """The installed ``vqbench.quantizers`` entry points (a seam tests replace)."""
    return list(metadata.entry_points(group=ENTRY_POINT_GROUP))


def _load_entry_points() -> None:
    """Import every ``vqbench.quantizers`` entry point; one warning per broken distribution."""
    broken: dict[str, list[str]] = {}
    for ep in _entry_points():
        dist = getattr(ep, "dist", None)
        origin = {"kind": "entry point", "entry_point": f"{ep.name} = {ep.value}"}
        if dist is not None:
            origin.update(distribution=dist.name, version=dist.version)
            source = f"entry point {dist.name} {dist.version}"
        else:
            source = f"entry point {ep.value}"
        try:
            target = ep.load()
        except PluginUnavailable as exc:  # an optional extra that is not installed
            _UNAVAILABLE[ep.name] = str(exc)
            continue
        except Exception as exc:  # a broken plugin must not break vqbench
            broken.setdefault(source, []).append(f"{ep.name} ({exception_line(exc)})")
            continue
        if not (isinstance(target, type) and issubclass(target, Quantizer)):
            broken.setdefault(source, []).append(f"{ep.name} ({ep.value} is not a Quantizer subclass)")
            continue
        existing = _QUANTIZERS.get(ep.name)
        if existing is not None and existing.target is target and existing.origin.get("kind") == "decorator":
            existing.source, existing.origin = source, origin  # the decorator ran on import; credit the distribution
            continue
        _add(QuantizerEntry(name=ep.name, target=target, citation=_first_doc_line(target),
                            source=source, origin=origin))
    for source, failures in broken.items():
        warnings.warn(f"plugin {source} failed to load and is skipped: {'; '.join(failures)}",
                      PluginWarning, stacklevel=3)


def _first_doc_line(obj: Any) -> str:
    lines = (inspect.getdoc(obj) or "").strip().splitlines()
    return lines[0] if lines else ""


def _ensure_loaded() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True  # set first: plugin modules call register_quantizer while they import
    try:
        for entry in _entries_from_yaml(registry_document(), "builtin", {"kind": "builtin"}):
            _add(entry)
        _load_entry_points()
        for path in filter(None, os.environ.get(REGISTRY_ENV, "").split(os.pathsep)):
            add_registry_file(path)
    except BaseException:
        reset_registry()  # all or nothing: never serve a half-loaded registry
        raise


def register_quantizer(name: str, *, defaults: dict[str, Any] | None = None, citation: str = ""
                       ) -> Callable[[type], type]:
    """Class decorator: ``@register_quantizer("myvq")`` makes ``build_quantizer("myvq")`` work."""
    def decorate(cls: type) -> type:
        if not (isinstance(cls, type) and issubclass(cls, Quantizer)):
            raise TypeError(f"@register_quantizer({name!r}) needs a Quantizer subclass, got {cls!r}")
        _ensure_loaded()
        _add(QuantizerEntry(name=name, target=cls, defaults=dict(defaults or {}),
                            citation=citation or _first_doc_line(cls), source=f"decorator in {cls.__module__}",
                            origin={"kind": "decorator", "module": cls.__module__}))
        return cls
    return decorate


def list_quantizers(pattern: str = "*") -> list[str]:
    """Registered names matching a shell-style wildcard, sorted."""
    _ensure_loaded()
    return sorted(n for n in _QUANTIZERS if fnmatch.fnmatchcase(n, pattern))


def get_quantizer_entry(name: str) -> QuantizerEntry:
    _ensure_loaded()
    if name not in _QUANTIZERS:
        if name in _UNAVAILABLE:
            raise UserError(f"quantizer {name!r} is not available: {_UNAVAILABLE[name]}")
        raise UserError(f"unknown quantizer {name!r}{suggest(name, _QUANTIZERS)}")
    return _QUANTIZERS[name]


def unavailable_quantizers() -> dict[str, str]:
    """Names whose plugin raised :class:`PluginUnavailable`, with the reason (what to install)."""
    _ensure_loaded()
    return dict(_UNAVAILABLE)


def resolve_quantizer_kwargs(name: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Constructor defaults ← registry defaults ← overrides, checked and typed."""
    return get_quantizer_entry(name).options(overrides)


def build_quantizer(name: str, **kwargs: Any) -> Quantizer:
    """Build a registered quantizer by name; unknown names and keywords are clear errors."""
    entry = get_quantizer_entry(name)
    resolved = resolve_quantizer_kwargs(name, kwargs)
    try:
        return entry.load_class()(**resolved)
    except (ValueError, TypeError) as exc:
        raise UserError(f"quantizer {name!r}: {exc}") from exc
