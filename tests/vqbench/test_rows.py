"""vqbench/rows.py: the results store: rows round-trip, concurrent writers, a re-written run
id replaces its row."""
from __future__ import annotations

import json
import threading

from tests.conftest import fake_summary
from vqbench.config import resolve_config
from vqbench.rows import append_row, load_results


def test_rows_round_trip_and_concurrent_writers(tmp_path):
    cfgs = [resolve_config(q, "cifar10", overrides=[f"seed={s}"]) for q in ("gmvq", "vqvae") for s in range(4)]
    threads = [threading.Thread(target=append_row, args=(tmp_path, c, fake_summary(c, mse=0.001 * i)))
               for i, c in enumerate(cfgs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rows = load_results(tmp_path)
    assert len(rows) == 8 and set(rows["status"]) == {"finished"}
    assert not [p for p in (tmp_path / "rows").iterdir() if not p.name.endswith(".parquet")]  # no tmp left
    gm = rows[rows["quantizer"] == "gmvq"].iloc[0]
    assert gm["q.beta"] == 1.0 and json.loads(gm["hparams"])["gamma"] == 0.01
    assert gm["paper_dataset"] == "cifar10" and "git_rev" in rows  # None outside a git checkout
    # Re-writing a run id replaces its row rather than adding one.
    append_row(tmp_path, cfgs[0], fake_summary(cfgs[0], mse=0.5))
    rows = load_results(tmp_path)
    assert len(rows) == 8 and rows["mse"].max() == 0.5
