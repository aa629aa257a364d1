"""``vqbench results`` and ``vqbench table`` (vqbench/cli/results.py, table.py) on a results
folder, and a missing folder in one line."""
from __future__ import annotations

import json

import pandas as pd

from tests.conftest import fake_summary
from vqbench.config import resolve_config
from vqbench.rows import append_row


def test_cli_results_and_table(cli, tmp_path):
    cfg = resolve_config("gmvq", "cifar10", overrides=[])
    append_row(tmp_path, cfg, fake_summary(cfg))
    out = cli("results", str(tmp_path), "--format", "json")
    assert out.returncode == 0 and json.loads(out.stdout)[0]["quantizer"] == "gmvq"
    out = cli("table", str(tmp_path), "--format", "csv")
    assert out.returncode == 0
    frame = pd.read_csv(pd.io.common.StringIO(out.stdout))
    assert len(frame) == 11 and frame.loc[frame["quantizer"] == "gmvq", "CIFAR10 MSE"].astype(str).item() == "4.00"
    bad = cli("table", str(tmp_path / "absent"))
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "does not exist" in bad.stderr
