"""``vqbench results`` and ``vqbench table`` (vqbench/cli/results.py, table.py) on a results
folder, and a missing folder in one line."""
from __future__ import annotations

import json

import pandas as pd

from tests.conftest import fake_summary
from vqbench.config import resolve_config
from vqbench.rows import append_row


def test_cli_results_and_table(tmp_path, capsys):
    from vqbench.cli import main

    cfg = resolve_config("gmvq", "cifar10", overrides=[])
    append_row(tmp_path, cfg, fake_summary(cfg))
    assert main(["results", str(tmp_path), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["quantizer"] == "gmvq"
    assert main(["table", str(tmp_path), "--format", "csv"]) == 0
    frame = pd.read_csv(pd.io.common.StringIO(capsys.readouterr().out))
    assert len(frame) == 11 and frame.loc[frame["quantizer"] == "gmvq", "CIFAR10 MSE"].astype(str).item() == "4.00"
    assert main(["table", str(tmp_path / "absent")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err


def test_table_reads_results_and_published_rows_by_default_once_per_run(tmp_path, monkeypatch, capsys):
    from vqbench.cli import main
    from vqbench.results import plan_suite

    fsq, gmvq = (plan_suite("modern-cifar10-short", quantizers=[q])[0] for q in ("fsq", "gmvq"))
    append_row(tmp_path / "published", gmvq.config, fake_summary(gmvq.config, mse=0.02))
    append_row(tmp_path / "published", fsq.config, fake_summary(fsq.config, mse=0.01))
    append_row(tmp_path / "results", fsq.config, fake_summary(fsq.config, mse=0.01))  # the same run in both
    monkeypatch.chdir(tmp_path)  # in process: the default folders are relative to where it runs
    assert main(["table", "--suite", "modern-cifar10-short", "--format", "csv", "--versus", "gmvq"]) == 0
    frame = pd.read_csv(pd.io.common.StringIO(capsys.readouterr().out)).set_index("quantizer")
    assert frame.loc["fsq", "MSE"] == "10.00" and frame.loc["gmvq", "MSE"] == "20.00"  # once, not "±0 (n=2)"
    assert frame.loc["fsq", "MSE vs gmvq"] == "-10.00 (untested: n=1 vs 1)"
    assert main(["table", "--suite", "modern-cifar10-short", "--versus", "vqvae"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--versus 'vqvae'" in err
