"""``vqbench sweep`` (vqbench/cli/sweep.py): bad input one line and exit 2; and, for real, two
worker processes, one SIGKILLed mid-trial, then a re-run that completes the budget (issue 9)."""
from __future__ import annotations

import subprocess
import sys

import optuna
from optuna.trial import TrialState

from tests._sweeps import TINY
from tests.conftest import REPO_ROOT, run_cli
from vqbench.sweep.storage import make_storage


def test_cli_bad_input_is_one_line_exit_2(tmp_path):
    cases = [(["sweep", "gama"], "unknown sweep 'gama'; did you mean 'gamma'"),
             (["sweep", "gamma", "--storage", "postgresql://nobody:secret@127.0.0.1:1/none", "--out", str(tmp_path)],
              "cannot open the sweep storage postgresql://nobody:***@127.0.0.1:1/none")]
    for args, message in cases:
        proc = run_cli(*args, timeout=120)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0] and "secret" not in proc.stderr, proc.stderr


def test_sigkill_one_of_two_workers_mid_trial_then_rerun_completes_the_budget(tmp_path):
    """Issue 9, for real: two worker processes, one SIGKILLed while its trial runs; the re-run
    fails that trial, re-runs its parameters, and ends with exactly the budget, no duplicates."""
    import os
    import signal
    import time

    slow = [o for o in TINY if not o.startswith("train.max_steps")] + ["train.max_steps=40", "train.epochs=100"]
    args = ["sweep", "gamma", "--dataset", "cifar10-tiny", "--n-trials", "3", "--workers", "2",
            "--out", str(tmp_path), *slow]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "VQBENCH_NO_PROGRESS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "vqbench", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    journal = tmp_path / "optuna.journal"
    victim = None
    deadline = time.monotonic() + 120
    while victim is None and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
        if journal.exists():
            try:
                study = optuna.load_study(study_name="gamma-cifar10-tiny", storage=make_storage(str(journal)))
            except KeyError:  # the study is not created yet
                continue
            running = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.RUNNING
                       and "worker_pid" in t.user_attrs and t.params]
            if running:
                victim = running[0]
    assert victim is not None, "no trial was seen running"
    os.kill(victim.user_attrs["worker_pid"], signal.SIGKILL)
    proc.communicate(timeout=300)

    rerun_args = [a if a != "2" else "1" for a in args]  # one worker is enough to retry the failed trial
    rerun = run_cli(*rerun_args, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    study = optuna.load_study(study_name="gamma-cifar10-tiny", storage=make_storage(str(journal)))
    trials = study.get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 3, [t.state for t in trials]
    assert study.trials[victim.number].state == TrialState.FAIL
    retried = [t for t in complete if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retried) == 1 and retried[0].params == victim.params
    assert len({tuple(sorted(t.params.items())) for t in complete}) == 3  # none ran twice
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
