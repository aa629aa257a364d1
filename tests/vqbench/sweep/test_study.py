"""vqbench/sweep/study.py: ``sweep`` with two workers on a journal keeps the trial budget
exact, resumes, refuses another base run under the same study name, and fails a bad search
key before any trial. Trials train the deliberately tiny model of tests/_sweeps.py."""
from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from tests._sweeps import TINY, check_study, tiny
from vqbench.errors import UserError
from vqbench.sweep import load_sweep, sweep
from vqbench.sweep.storage import make_storage


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


def test_workers_stop_when_the_sweep_process_is_killed(tmp_path):
    """SIGKILL to the sweep's own pid (no signal reaches its workers): they stop within
    seconds instead of training on as orphans, and a later sweep re-runs their trials."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import REPO_ROOT

    long_trials = [o for o in TINY if not o.startswith("train.max_steps")] + ["train.max_steps=100000"]
    script = ("import sys; from tests._sweeps import tiny; from vqbench.sweep import sweep; "
              f"sweep(tiny('gamma').with_base(overrides={long_trials!r}), out=sys.argv[1], workers=2, n_trials=2)")
    parent = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], cwd=REPO_ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    study_name, journal = "gamma-cifar10-tiny", str(tmp_path / "optuna.journal")
    pids: list[int] = []
    deadline = time.monotonic() + 120
    while len(pids) < 2 and time.monotonic() < deadline and parent.poll() is None:
        time.sleep(0.5)
        try:
            trials = optuna.load_study(study_name=study_name, storage=make_storage(journal)).get_trials()
        except (KeyError, ValueError, FileNotFoundError):  # the study is not written yet
            continue
        pids = [t.user_attrs["worker_pid"] for t in trials if t.state == TrialState.RUNNING and "worker_pid" in t.user_attrs]
    assert len(pids) == 2, parent.stderr.read() if parent.poll() is not None else "no two running trials in 120 s"
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()

    def alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    deadline = time.monotonic() + 60
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not any(alive(p) for p in pids), "sweep workers outlived their killed sweep process by 60 s"
    assert "its sweep process" in parent.stderr.read()  # each says why it stopped
    states = [t.state for t in optuna.load_study(study_name=study_name, storage=make_storage(journal)).get_trials()]
    assert states == [TrialState.FAIL, TrialState.FAIL], states  # interrupted: failed, for a later sweep to re-queue
