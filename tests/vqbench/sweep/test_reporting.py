"""vqbench/sweep/reporting.py: ``report``: the Pareto front, the table and the plots; no sweep
storage or no study said in one line."""
from __future__ import annotations

import optuna
import pandas as pd
import pytest

from tests._sweeps import tiny
from vqbench.config import config_hash
from vqbench.errors import UserError
from vqbench.sweep import load_sweep, open_study, report


def test_report_pareto_front_table_and_plots(tmp_path, capsys):
    spec = tiny("gamma-beta")
    journal = str(tmp_path / "optuna.journal")
    study, _ = open_study(spec, journal, "gamma-beta-cifar10-tiny", base_hash=config_hash(spec.base_config()))
    dist = {"quantizer.gamma": optuna.distributions.FloatDistribution(1e-4, 1.0, log=True),
            "quantizer.beta": optuna.distributions.FloatDistribution(1.0, 16.0, log=True)}
    points = [(0.030, 10.0), (0.020, 8.0), (0.025, 9.0), (0.040, 30.0), (0.035, 20.0), (0.050, 25.0)]
    for i, (mse, ppl) in enumerate(points):  # (0.050, 25) is dominated by (0.040, 30); (0.025, 9) by nothing
        study.add_trial(optuna.trial.create_trial(
            values=[mse, ppl], distributions=dist, params={"quantizer.gamma": 10 ** -(i % 4), "quantizer.beta": 1.0 + i}))
    result = report(spec, out=tmp_path, log=print)
    front = sorted(result.frame[result.frame.on_front].trial)
    assert front == [0, 1, 2, 3, 4]
    assert list(result.best.trial) == [1, 2, 0, 4, 3]  # sorted by mse
    printed = capsys.readouterr().out
    assert "Pareto front" in printed and "5 trials" in printed
    for key in ("csv", "parquet", "history", "pareto"):
        assert result.files[key].is_file() and result.files[key].stat().st_size > 0
    assert set(pd.read_parquet(result.files["parquet"]).columns) >= {"trial", "quantizer.gamma", "mse", "perplexity"}


def test_report_without_a_sweep_says_where_it_looked(tmp_path):
    with pytest.raises(UserError, match="no sweep storage at .*empty"):
        report(load_sweep("gamma"), out=tmp_path / "empty")
    open_study(tiny("gamma"), str(tmp_path / "optuna.journal"), "gamma-cifar10-tiny", base_hash="h")
    with pytest.raises(UserError, match="no study 'nope'"):
        report("nope", out=tmp_path)
