"""vqbench/sweep/worker.py: the trial objective reports every epoch to the pruner, which stops
a bad trial."""
from __future__ import annotations

import optuna
import pytest

from tests._sweeps import tiny
from vqbench.sweep import TrialObjective


def test_pruner_sees_every_epoch_and_stops_a_bad_trial(tmp_path):
    study = optuna.create_study(pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=2))
    study.add_trial(optuna.trial.create_trial(value=0.1, intermediate_values={1: 0.1, 2: 0.1}))
    objective = TrialObjective(tiny("gamma"), "s", tmp_path, 0, 0, None, {}, None, print)
    trial = study.ask()
    on_epoch = objective._reporter(trial)
    on_epoch({"epoch": 1, "mse": 0.5})  # worse than the median, but within the warm-up epoch: goes on
    with pytest.raises(optuna.TrialPruned):
        on_epoch({"epoch": 2, "mse": 0.5})
    assert study.get_trials()[-1].intermediate_values == {1: 0.5, 2: 0.5}
