"""What the typed configuration cannot check by itself, checked when a config is resolved:
``${...}`` interpolations (resolved in place), ``???`` (no value), NUL characters, and
``~user`` paths whose user does not exist. Each is one UserError line here instead of a
traceback where the value is first read (the config hash, a check, a path)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import UserError, first_line

PATH_KEYS = ("out", "results", "data.root", "data.train", "data.test")


def resolved(cfg: DictConfig) -> DictConfig:
    """``cfg`` with its interpolations resolved in place, refused if a value is missing or unusable."""
    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as exc:
        raise UserError(f"cannot resolve {getattr(exc, 'full_key', None) or 'an interpolation'}: "
                        f"{first_line(exc)}") from exc
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise UserError(f"{missing[0]} has no value (???); give it one, e.g. {missing[0]}=VALUE")
    nul = _nul_key(OmegaConf.to_container(cfg))
    if nul:
        raise UserError(f"{nul} contains a NUL character")  # no path or name may hold one
    for key in PATH_KEYS:
        value = OmegaConf.select(cfg, key)
        if isinstance(value, str) and value.startswith("~"):
            try:
                Path(value).expanduser()
            except RuntimeError as exc:  # ~nosuchuser: pathlib cannot find that home directory
                raise UserError(f"{key}={value}: {first_line(exc)} (no such user?)") from exc
    return cfg


def _nul_key(node: Any, prefix: str = "") -> str | None:
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        where = f"{prefix}{key}"
        if "\x00" in str(key) or (isinstance(value, str) and "\x00" in value):
            return where
        found = _nul_key(value, f"{where}.")
        if found:
            return found
    return None
