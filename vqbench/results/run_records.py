"""Finished runs as records a figure can be drawn from: the run folders under a root, or a
results folder's rows, whose ``history`` column keeps the curves once the folders are gone."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..errors import UserError
from ..rundir import CONFIG, SUMMARY, read_metrics, read_summary


@dataclass
class RunRecord:
    path: Path
    config: dict[str, Any]
    summary: dict[str, Any]
    history: list[dict[str, Any]]

    @property
    def label(self) -> str:
        return self.path.name


def find_runs(root: str | Path, suite: str | None = None) -> list[RunRecord]:
    """Every finished run folder (one with summary.json) under ``root``.

    ``root`` may also be a results folder: its rows name their run folders, and a row whose
    folder is gone (a fresh clone's ``published/``) brings its curves itself (``history``).
    ``suite`` keeps a results folder's rows of that suite only.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise UserError(f"{root} does not exist; pass a folder of run folders (default: runs)")
    folders = [] if suite else [path.parent for path in sorted(root.rglob(SUMMARY))]
    if not folders and (root / "rows").is_dir():
        return _runs_of_rows(root, suite)
    if suite:
        raise UserError(f"--suite needs a results folder (one with rows/), not {root}")
    runs = []
    for folder in folders:
        summary = read_summary(folder)
        if summary is None:
            continue
        config = yaml.safe_load((folder / CONFIG).read_text()) if (folder / CONFIG).exists() else {}
        runs.append(RunRecord(folder, config or {}, summary, read_metrics(folder)))
    return runs


def _runs_of_rows(root: Path, suite: str | None) -> list[RunRecord]:
    from ..rows import load_results  # pandas only for a results folder

    rows = load_results(root, finished_only=True)
    if suite is not None and len(rows):
        from .suite import suite_hashes
        from .table import results_seeds

        rows = rows[rows["config_hash"].astype(str).isin(suite_hashes(suite, extra_seeds=results_seeds(rows)))]
    runs = []
    for _, row in rows.iterrows():
        folder = Path(row["run_dir"]) if isinstance(row.get("run_dir"), str) else None
        if folder is not None and (folder / SUMMARY).is_file():
            summary = read_summary(folder)
            config = yaml.safe_load((folder / CONFIG).read_text()) if (folder / CONFIG).exists() else {}
            runs.append(RunRecord(folder, config or {}, summary or {}, read_metrics(folder)))
        elif isinstance(row.get("history"), str):
            summary = {k: v for k, v in row.items() if not isinstance(v, float) or v == v}
            runs.append(RunRecord(Path(str(row["run_id"])), json.loads(row["config"]), summary,
                                  json.loads(row["history"])))
    return runs
