"""The results store: one tidy row per finished run, one small parquet file per row.

Layout: ``<results>/rows/<run_id>.parquet``. Each file is written to a temporary name,
fsynced and renamed, so a reader never sees half a row and many writers (sweep workers,
suites on several machines sharing a folder) need no lock: they never write the same
file. :func:`load_results` merges the files into one pandas DataFrame on read
(benchopt's tidy-parquet idea). A re-run of the same run id replaces its row.

Columns: run id, config hash, the quantizer and its hyperparameters (``hparams`` as
JSON, and one ``q.<key>`` column per scalar hyperparameter, e.g. ``q.beta``), dataset,
model, seed, epochs, steps, the test metrics, throughput, wall time and the environment
(device name, torch, vqbench, git revision). Metrics (``METRICS``): mse, perplexity,
code_perplexity, codes_used, and psnr, ssim, usage (absent, so None, in rows from before them);
``history``, the per-epoch records of ``metrics.jsonl`` as JSON. ``recipe`` and ``recipe_id`` say how the run
was trained apart from the quantizer and seed, so that :mod:`vqbench.results.table` can put runs
of one recipe side by side; ``paper_dataset`` says which Table 1 column a run belongs to.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from .errors import UserError
from .registry import registry_document
from .rundir import METRICS as METRICS_FILE, read_metrics, writable_dir, write_atomic

ROWS = "rows"
METRICS = ("mse", "perplexity", "code_perplexity", "codes_used", "psnr", "ssim", "usage")
# Where and how a run is stored, and what varies between the runs of one recipe.
_NOT_RECIPE = ("out", "name", "device", "results", "seed", "quantizer")


@functools.lru_cache(maxsize=1)
def git_revision() -> str | None:
    """The checkout's commit (``+dirty`` with uncommitted changes), or None outside git."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "-C", str(here), "rev-parse", "--short=12", "HEAD"],
                             capture_output=True, text=True, timeout=10)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain"],
                               capture_output=True, text=True, timeout=10)
        return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def paper_dataset(cfg: DictConfig) -> str | None:
    """Which Table 1 column a run's data stands for: ``cifar10``, ``celeba`` or None.

    The registry's dataset entry says so (``table1:``); the generic ``npz`` loader is
    recognised by its shard path (``.../cifar10/train-0.npz`` is CIFAR-10 images).
    """
    spec = registry_document().get("datasets", {}).get(cfg.data.name, {})
    if spec.get("table1"):
        return str(spec["table1"])
    path = str(cfg.data.train or "").lower()
    for name in ("cifar10", "celeba"):
        if name in path:
            return name
    return None


def recipe_of(cfg: DictConfig, summary: dict[str, Any]) -> tuple[str, str]:
    """(recipe_id, human description) of everything but the quantizer and the seed."""
    data = OmegaConf.to_container(cfg, resolve=True)
    for key in _NOT_RECIPE:
        data.pop(key, None)
    data["num_codes"] = cfg.quantizer.get("num_codes")
    recipe_id = hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]
    source = cfg.data.name if cfg.data.name != "npz" else Path(str(cfg.data.train)).name
    text = (f"{source}: {summary['train_images']} train / {summary['test_images']} {summary.get('eval_split') or 'test'} images, "
            f"{summary['epochs']} epochs = {summary['steps']} steps of batch {cfg.train.batch_size}, "
            f"lr {cfg.train.lr:g}")
    return recipe_id, text


def make_row(cfg: DictConfig, summary: dict[str, Any], status: str = "finished",
             error: str | None = None, history: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The tidy row of one run from its resolved config and ``fit``'s summary."""
    hparams = {k: v for k, v in OmegaConf.to_container(cfg.quantizer, resolve=True).items() if k != "name"}
    recipe_id, recipe = recipe_of(cfg, summary)
    row: dict[str, Any] = {
        "run_id": summary["run_id"], "status": status, "error": error,
        "config_hash": summary["config_hash"], "quantizer": cfg.quantizer.name,
        "hparams": json.dumps(hparams, sort_keys=True, default=str),
        "dataset": cfg.data.name, "paper_dataset": paper_dataset(cfg), "model": cfg.model.name,
        "seed": int(cfg.seed), "epochs": summary.get("epochs"), "steps": summary.get("steps"),
        "batch_size": int(cfg.train.batch_size), "lr": float(cfg.train.lr),
        "train_images": summary.get("train_images"), "test_images": summary.get("test_images"),
        "eval_split": summary.get("eval_split", "test"),
        "recipe_id": recipe_id, "recipe": recipe,
        **{m: summary.get(m) for m in METRICS},
        "num_codes": summary.get("num_codes"), "mean_image_mse": summary.get("mean_image_mse"),
        "images_per_s": summary.get("images_per_s"), "wall_s": summary.get("wall_s"),
        "device_name": summary.get("device_name"), "torch": summary.get("torch"),
        "vqbench": summary.get("vqbench"), "git_rev": git_revision(),
        "run_dir": summary.get("run_dir"), "finished_at": pd.Timestamp.now(tz="UTC"),
        "config": json.dumps(OmegaConf.to_container(cfg, resolve=True), sort_keys=True, default=str),
        "history": json.dumps(history, default=str) if history is not None else None,
    }
    for key, value in hparams.items():
        if isinstance(value, (bool, int, float, str)) or value is None:
            row[f"q.{key}"] = value
    return row


def history_json(run_dir: str | os.PathLike | None) -> str | None:
    """A run folder's per-epoch records (``metrics.jsonl``) as the ``history`` column's JSON, for
    a row written before that column (:mod:`vqbench.results.publish` fills it in)."""
    if not run_dir or not (Path(run_dir) / METRICS_FILE).is_file():
        return None
    return json.dumps(read_metrics(Path(run_dir)), default=str)


def rows_dir(results_dir: str | os.PathLike) -> Path:
    """``<results_dir>/rows``, created and writable (the trainer checks it before training)."""
    return writable_dir(Path(results_dir) / ROWS, "results folder", "set results=PATH")


def append_row(results_dir: str | os.PathLike, cfg: DictConfig, summary: dict[str, Any],
               status: str = "finished", error: str | None = None,
               history: list[dict[str, Any]] | None = None) -> Path:
    """Write one run's row as ``<results_dir>/rows/<run_id>.parquet`` (tmp + fsync + rename);
    ``history``, the run's per-epoch records, keeps its curves in the row."""
    row = make_row(cfg, summary, status, error, history)
    path = rows_dir(results_dir) / f"{row['run_id']}.parquet"
    write_atomic(path, lambda fh: pd.DataFrame([row]).to_parquet(fh, index=False), "wb")
    return path


def load_results(results_dir: str | os.PathLike = "results", *, finished_only: bool = False) -> pd.DataFrame:
    """Every row under ``results_dir`` merged into one DataFrame (empty when none).

    ``results_dir`` may be the results folder or its ``rows/`` folder. Unreadable files
    (another writer's leftovers) are skipped with a warning rather than failing the read.
    """
    root = Path(results_dir).expanduser()
    try:
        root.stat()
    except FileNotFoundError:
        pass
    except OSError as exc:  # a name too long, a loop of links: the path itself is wrong
        raise UserError(f"results folder {str(root)[:80]}: {exc.strerror}; pass an existing folder") from None
    if not root.exists():
        raise UserError(f"results folder {root} does not exist; runs write their rows to `results` "
                        "by default (config key results=PATH)")
    if not root.is_dir():
        raise UserError(f"{root} is a file, not a results folder; pass the folder runs write to (results=PATH)")
    folder = root / ROWS if (root / ROWS).is_dir() else root
    frames = []
    for path in sorted(folder.glob("*.parquet")):
        try:
            frames.append(pd.read_parquet(path))
        except Exception as exc:  # a foreign or corrupt file must not hide every other result
            import warnings

            warnings.warn(f"skipping unreadable result row {path}: {exc}")
    if not frames:
        return pd.DataFrame(columns=["run_id", "status", "config_hash", "quantizer", *METRICS])
    frames = [f.dropna(axis=1, how="all") for f in frames]
    table = pd.concat(frames, ignore_index=True, sort=False)
    if finished_only:
        table = table[table["status"] == "finished"].reset_index(drop=True)
    return table.sort_values("finished_at", kind="stable").reset_index(drop=True)


def load_results_from(dirs: list[str | os.PathLike]) -> pd.DataFrame:
    """The rows of several results folders merged, one per run (a run in two folders counts once)."""
    tables = [t for t in (load_results(d) for d in dirs) if len(t)]
    if not tables:
        return load_results(dirs[0])
    table = pd.concat(tables, ignore_index=True, sort=False).drop_duplicates("run_id", keep="last")
    return table.sort_values("finished_at", kind="stable").reset_index(drop=True)


def finished_hashes(results_dir: str | os.PathLike) -> set[str]:
    """Config hashes of the finished runs under ``results_dir`` (empty if it does not exist)."""
    if not Path(results_dir).expanduser().exists():
        return set()
    table = load_results(results_dir, finished_only=True)
    return set(table["config_hash"].astype(str)) if len(table) else set()
