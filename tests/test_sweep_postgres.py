"""``vqbench sweep --storage postgresql://…`` (issue 5): two workers on a real PostgreSQL server.

The server comes from ``VQBENCH_TEST_POSTGRES_URL`` (``.ci/postgres.sh`` sets it in CI), else
this module starts one itself with ``.ci/postgres.sh`` where PostgreSQL's binaries exist.
Without either it skips, except under ``CI=true``, where it fails.
"""
from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import optuna
import pytest

from conftest import REPO_ROOT
from test_sweep import check_study, tiny
from vqbench.sweep import sweep
from vqbench.sweep.storage import with_driver

pytestmark = pytest.mark.postgres


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
