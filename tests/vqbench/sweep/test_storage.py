"""vqbench/sweep/storage.py: a dead worker's trial is failed and re-run with its parameters;
two workers on a real PostgreSQL server keep the budget exact (``--storage postgresql://…``).

The server comes from ``VQBENCH_TEST_POSTGRES_URL`` (``.ci/postgres.sh`` sets it in CI), else
this module starts one itself with ``.ci/postgres.sh`` where PostgreSQL's binaries exist.
Without either the PostgreSQL test skips, except under ``CI=true``, where it fails.
"""
from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests._sweeps import check_study, tiny
from tests.conftest import REPO_ROOT
from vqbench.config import config_hash
from vqbench.sweep import open_study, sweep
from vqbench.sweep.storage import budget, recover_lost_trials, with_driver, worker_identity


def test_dead_workers_trial_is_failed_and_rerun_with_its_params(tmp_path):
    spec = tiny("gamma")
    journal = str(tmp_path / "optuna.journal")
    study, _ = open_study(spec, journal, "g", base_hash=config_hash(spec.base_config()))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lost = study.ask({"quantizer.gamma": optuna.distributions.FloatDistribution(1e-4, 1.0, log=True)})
    for k, v in {**worker_identity(), "worker_pid": dead.pid}.items():
        lost.set_user_attr(k, v)
    alive = study.ask()  # a RUNNING trial of a live worker (this process): left alone
    for k, v in worker_identity().items():
        alive.set_user_attr(k, v)
    assert recover_lost_trials(study) == [0]
    assert recover_lost_trials(study) == []  # re-queued once only
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING]
    study.tell(alive, state=TrialState.FAIL)  # interrupted before it sampled anything: nothing to re-queue
    assert budget(study)["used"] == 0
    # Resuming runs the re-queued trial, with the lost trial's gamma, and nothing else.
    result = sweep(spec, storage=journal, study_name="g", out=tmp_path, n_trials=1, log=lambda s: None)
    assert result.counts["complete"] == 1 and result.counts["waiting"] == 0
    done = study.get_trials(states=(TrialState.COMPLETE,))[0]
    assert done.params == lost.params and done.system_attrs["failed_trial"] == 0
    assert Path(done.user_attrs["run_dir"], "summary.json").is_file()


@pytest.fixture(scope="module")
def postgres_url():
    url = os.environ.get("VQBENCH_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    proc = subprocess.run([str(REPO_ROOT / ".ci" / "postgres.sh")], capture_output=True, text=True,
                          env={**os.environ, "VQBENCH_PG_NO_INSTALL": "1"}, timeout=120)
    if proc.returncode != 0:
        why = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the PostgreSQL sweep tests, but no server could start: {why}")
        pytest.skip(f"no PostgreSQL server: VQBENCH_TEST_POSTGRES_URL is unset and .ci/postgres.sh failed ({why})")
    env = dict(line.removeprefix("export ").split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    yield env["VQBENCH_TEST_POSTGRES_URL"]
    data = env["VQBENCH_TEST_POSTGRES_DATA"]
    bindir = next(Path("/usr/lib/postgresql").glob("*/bin"), None)
    pg_ctl = str(bindir / "pg_ctl") if bindir else "pg_ctl"
    as_user = ["runuser", "-u", "postgres", "--"] if os.getuid() == 0 else []
    subprocess.run([*as_user, pg_ctl, "-D", data, "-m", "immediate", "stop"], capture_output=True, timeout=60)


@pytest.mark.postgres
def test_postgres_two_workers_exact_budget_then_resume(postgres_url, tmp_path):
    spec = tiny("gamma")
    study_name = f"gamma-{uuid.uuid4().hex[:8]}"  # a server from the environment may be reused
    first = sweep(spec, storage=postgres_url, study_name=study_name, out=tmp_path, workers=2, n_trials=3,
                  log=lambda s: None)
    assert first.worker_exit_codes == [0, 0] and first.counts["complete"] == 3
    trials = check_study(postgres_url, study_name, 3)
    assert len({t.user_attrs["worker_index"] for t in trials}) == 2
    sweep(spec, storage=postgres_url, study_name=study_name, out=tmp_path, n_trials=4, log=lambda s: None)
    check_study(postgres_url, study_name, 4)
    # What the dashboard sees: a plain Optuna load of the same URL.
    assert len(optuna.load_study(study_name=study_name, storage=with_driver(postgres_url)).trials) == 4
