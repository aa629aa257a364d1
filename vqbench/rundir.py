"""The run folder: its layout (``<out>/<name>/``: config, metrics, checkpoint, summary), the
checks before a run writes there, atomic writes (temporary file, fsync, rename) so that a
killed run never leaves a half-written summary or checkpoint behind, and the readers.
"""
from __future__ import annotations

import io
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .config import config_hash
from .errors import UserError, WriteFailed

CHECKPOINT = "checkpoint.pt"
PREVIOUS_CHECKPOINT = "checkpoint.prev.pt"  # the one before: resume falls back to it
SUMMARY = "summary.json"
CONFIG = "config.yaml"
METRICS = "metrics.jsonl"


def _fsync_dir(path: Path) -> None:
    """Make a rename durable: fsync the folder that holds it (POSIX; a no-op elsewhere)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: Path, write, mode: str, before_replace=None) -> None:
    """``write(fh)`` into memory, then into a temporary file, fsync, rename over ``path``,
    fsync the folder; ``before_replace()`` runs between the fsync and the rename (the
    checkpoint rotation).

    The temporary name carries pid and time, so concurrent writers of one path (sweep
    workers writing result rows, two suites training one run) never share it. Serialising
    first keeps encoder errors apart from I/O errors: a failed write (disk full, EIO)
    removes its temporary file, leaves ``path`` and everything else as it was, and is one
    :class:`WriteFailed` line."""
    buffer = io.BytesIO() if "b" in mode else io.StringIO()
    write(buffer)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    try:
        with open(tmp, mode) as fh:
            fh.write(buffer.getvalue())
            fh.flush()
            os.fsync(fh.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except OSError as exc:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise WriteFailed(path, exc) from exc
    _fsync_dir(path.parent)


def write_json_atomic(path: Path, payload: Any) -> None:
    write_atomic(path, lambda fh: json.dump(payload, fh, indent=2, default=str), "w")


def write_text_atomic(path: Path, text: str) -> None:
    write_atomic(path, lambda fh: fh.write(text), "w")


def write_jsonl_atomic(path: Path, records: list[dict[str, Any]]) -> None:
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in records))


def run_dir_for(cfg: DictConfig) -> Path:
    """``<out>/<name>``, the name defaulting to ``<quantizer>-<dataset>-<config hash>``, so
    re-running a command finds (and resumes) its own run folder."""
    name = cfg.name or f"{cfg.quantizer.name}-{cfg.data.name}-{config_hash(cfg)}"
    return Path(cfg.out).expanduser() / name


def check_run_dir_matches(run_dir: Path, cfg: DictConfig) -> None:
    """A run folder may only be resumed by the configuration that made it."""
    path = run_dir / CONFIG
    if not path.is_file():
        return
    try:
        theirs = config_hash(OmegaConf.load(path))
    except Exception as exc:
        raise UserError(f"{path} cannot be read ({type(exc).__name__}); the run folder is damaged: "
                        "delete it or choose another name/out") from exc
    if theirs != config_hash(cfg):
        raise UserError(f"run folder {run_dir} holds a run of another configuration (hash {theirs}, "
                        f"this one is {config_hash(cfg)}); choose another name= or out=, or delete it")


def check_run_dir(cfg: DictConfig, resume: bool = False) -> Path:
    """The run's folder, checked before anything is written: it holds no run or this
    configuration's, and one to continue when ``resume`` insists on it."""
    run_dir = run_dir_for(cfg)
    check_run_dir_matches(run_dir, cfg)
    if resume and not (run_dir / CONFIG).is_file():
        raise UserError(f"nothing to resume: {run_dir} holds no run; drop --resume to start it")
    return run_dir


def writable_dir(path: str | os.PathLike, what: str, fix: str) -> Path:
    """``path`` created if need be and probed with a write; else one line: the ``what`` and
    how to ``fix`` it. Called before the work whose output goes there, not after."""
    path = Path(path).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):  # unique: writers may share the folder
            pass
    except OSError as exc:
        raise UserError(f"cannot write the {what} {path}: {exc.strerror}; {fix}") from exc
    return path


def prepare_run_dir(cfg: DictConfig) -> Path:
    return writable_dir(run_dir_for(cfg), "run folder", "pass --out to a writable folder")


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    """The run's summary.json, or None where there is none (a damaged one: UserError)."""
    path = run_dir / SUMMARY
    if not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} cannot be read ({type(exc).__name__}); delete the run folder to train again") from exc
    if not isinstance(summary, dict) or "status" not in summary:
        raise UserError(f"{path} is not a vqbench summary (no status); delete the run folder to train again")
    return summary


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / METRICS
    if not path.is_file():
        return []
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} cannot be read ({type(exc).__name__}); delete the run folder to train again") from exc
