"""vqbench/sweep/study.py: ``sweep`` with two workers on a journal keeps the trial budget
exact, resumes, refuses another base run under the same study name, and fails a bad search
key before any trial. Trials train the deliberately tiny model of tests/_sweeps.py."""
from __future__ import annotations

import pytest

from tests._sweeps import TINY, check_study, tiny
from vqbench.errors import UserError
from vqbench.sweep import load_sweep, sweep


def test_bad_search_key_fails_before_any_trial(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("base: {quantizer: gmvq, dataset: cifar10-tiny}\nspace: {quantizer.gama: {low: 0.1, high: 1}}\n"
                    "objectives: [{metric: mse, direction: minimize}]\n")
    with pytest.raises(UserError, match="gama"):
        sweep(load_sweep(path), out=tmp_path)
    assert not (tmp_path / "runs").exists()


def test_journal_two_workers_exact_budget_then_resume(tmp_path):
    spec = tiny("gamma")
    first = sweep(spec, out=tmp_path, workers=2, n_trials=4, log=lambda s: None)
    assert first.worker_exit_codes == [0, 0] and first.counts["complete"] == 4
    journal = str(tmp_path / "optuna.journal")
    trials = check_study(journal, "gamma-cifar10-tiny", 4)
    assert len({t.user_attrs["worker_index"] for t in trials}) == 2  # both workers ran trials
    assert len({t.user_attrs["sampler_seed"] for t in trials}) == 2  # each its own seed
    again = sweep(spec, out=tmp_path, workers=1, n_trials=6, log=lambda s: None)
    assert again.counts["complete"] == 6
    check_study(journal, "gamma-cifar10-tiny", 6)
    nothing = sweep(spec, out=tmp_path, n_trials=6, log=lambda s: None)
    assert nothing.worker_exit_codes == [] and nothing.counts["complete"] == 6
    # Another base run under the same study name is refused, not mixed in.
    with pytest.raises(UserError, match="different base config"):
        sweep(spec.with_base(overrides=["train.max_steps=3"]), out=tmp_path, n_trials=7)


def test_grid_sweep_two_workers_try_every_point_once(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text("base: {quantizer: gmvq, dataset: cifar10-tiny}\n"
                    "space: {quantizer.gamma: {choices: [0.001, 0.01, 0.1]}}\n"
                    "objectives: [{metric: mse, direction: minimize}]\nsampler: {name: grid}\n")
    spec = load_sweep(path).with_base(overrides=TINY)
    assert spec.n_trials == 3  # the grid's size unless the file says fewer
    with pytest.raises(UserError, match="--n-trials 4 is more than the 3 points of grid's grid"):
        sweep(spec, out=tmp_path, n_trials=4)
    result = sweep(spec, out=tmp_path, workers=2, log=lambda s: None)
    assert result.counts["complete"] == 3
    trials = check_study(str(tmp_path / "optuna.journal"), "grid-cifar10-tiny", 3)
    assert sorted(t.params["quantizer.gamma"] for t in trials) == [0.001, 0.01, 0.1]
