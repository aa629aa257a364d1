"""Publishing: the finished rows of chosen suites, copied from an experiment's results folder
into the one the project commits (``published/``, which ``vqbench table`` reads on a fresh
clone), each with its per-epoch curves (the ``history`` column) filled from its run folder
when the row predates that column. Checkpoints and run folders stay behind.
"""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from ..errors import UserError
from ..rows import history_json, load_results, rows_dir
from ..rundir import write_atomic
from .suite import suite_hashes
from .table import results_seeds


def publish_rows(source: str | os.PathLike, dest: str | os.PathLike, suites: list[str]) -> list[Path]:
    """Copy the finished rows of ``suites`` from ``source`` to ``dest``/rows; the paths written."""
    rows = load_results(source, finished_only=True)
    hashes: set[str] = set()
    for suite in suites:
        hashes |= suite_hashes(suite, extra_seeds=results_seeds(rows))
    chosen = rows[rows["config_hash"].astype(str).isin(hashes)]
    if chosen.empty:
        raise UserError(f"no finished rows of suite {', '.join(suites)} in {source}; run `vqbench suite NAME` first")
    folder = rows_dir(dest)
    written = []
    for _, row in chosen.iterrows():
        record = row.dropna().to_dict()
        if not record.get("history"):
            history = history_json(record.get("run_dir"))
            if history is not None:
                record["history"] = history
        path = folder / f"{record['run_id']}.parquet"
        write_atomic(path, lambda fh, r=record: pd.DataFrame([r]).to_parquet(fh, index=False), "wb")
        written.append(path)
    return written
