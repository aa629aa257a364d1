"""Run-folder I/O: atomic writes (temporary file, fsync, rename), so a killed run never
leaves a half-written summary or checkpoint behind."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from .config import config_hash
from .errors import UserError


def write_json_atomic(path: Path, payload: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as fh:
        json.dump(payload, fh, indent=2, default=str)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        torch.save(state, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def prepare_run_dir(cfg: DictConfig) -> Path:
    name = cfg.name or f"{cfg.quantizer.name}-{cfg.data.name}-{config_hash(cfg)}"
    run_dir = Path(cfg.out).expanduser() / name
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"cannot write the run folder {run_dir}: {exc.strerror}; pass --out to a writable folder") from exc
    return run_dir
