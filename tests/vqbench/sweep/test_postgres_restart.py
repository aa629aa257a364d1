"""The database restarts mid-sweep (issue 19): two workers on a real PostgreSQL ride it out.

The server is stopped (``pg_ctl stop -m fast``: every session is cut, open transactions roll
back) while trials run, kept down ~5 s and started again. The workers' storage calls wait
and retry on fresh connections (bounded backoff); the study ends with exactly the requested
number of complete trials, none lost, none run twice. Beyond the bound a worker stops with
one line (tested without a server below, by making the storage's connection fail).

The server comes from ``VQBENCH_TEST_POSTGRES_URL`` + ``VQBENCH_TEST_PGCTL`` (``.ci/postgres.sh``
exports both), else this module starts one with ``.ci/postgres.sh`` where PostgreSQL's binaries
exist. Without either it skips, except under ``CI=true``, where it fails.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import threading
import time
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

REPO_ROOT = Path(__file__).resolve().parents[3]

TINY = ["device=cpu", "data.limit=32", "data.test_limit=16", "model.channels=4", "model.res_blocks=0",
        "model.latent_dim=4", "quantizer.num_codes=8", "train.kmeans_samples=64", "train.batch_size=16",
        "train.eval_batch_size=16", "train.max_steps=8"]  # 4 epochs: 4 reports to the database a trial
N_TRIALS = 3
DOWN_S = 5.0


def _unavailable(why: str):
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run the PostgreSQL restart test: {why}")
    pytest.skip(why)


@pytest.fixture(scope="module")
def server():
    """(URL, pg_ctl command prefix) of a server this test may stop and start."""
    url, pgctl = os.environ.get("VQBENCH_TEST_POSTGRES_URL"), os.environ.get("VQBENCH_TEST_PGCTL")
    if url and pgctl:
        yield url, shlex.split(pgctl)
        return
    if url:
        _unavailable("VQBENCH_TEST_POSTGRES_URL is set without VQBENCH_TEST_PGCTL: no way to restart that server")
    proc = subprocess.run([str(REPO_ROOT / ".ci" / "postgres.sh")], capture_output=True, text=True,
                          env={**os.environ, "VQBENCH_PG_NO_INSTALL": "1"}, timeout=120)
    if proc.returncode != 0:
        _unavailable(f"no PostgreSQL server: .ci/postgres.sh failed "
                     f"({(proc.stderr.strip().splitlines() or ['no output'])[-1]})")
    env = dict(line.removeprefix("export ").split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    pgctl = shlex.split(shlex.split(env["VQBENCH_TEST_PGCTL"])[0])  # the value as `eval` would set it
    yield env["VQBENCH_TEST_POSTGRES_URL"], pgctl
    subprocess.run([*pgctl, "-m", "immediate", "stop"], capture_output=True, timeout=60)


def _trials(url: str, study: str) -> list[optuna.trial.FrozenTrial]:
    from vqbench.sweep.storage import make_storage

    try:
        return optuna.load_study(study_name=study, storage=make_storage(url)).get_trials(deepcopy=False)
    except KeyError:  # not created yet
        return []


@pytest.mark.postgres
@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")  # heartbeats, from the threads
def test_workers_opening_a_fresh_database_at_once_all_get_it(server):
    """Optuna creates its tables on first use; several openers of an empty database at once
    (workers, machines) raced to CREATE TYPE studydirection and all but one failed."""
    import psycopg2

    from vqbench.sweep.storage import make_storage

    url = server[0]
    fresh = f"fresh_{uuid.uuid4().hex[:8]}"
    conn = psycopg2.connect(url.rsplit("/", 1)[0] + "/postgres")
    conn.autocommit = True
    conn.cursor().execute(f"CREATE DATABASE {fresh}")
    errors: list[BaseException] = []

    def open_it() -> None:
        try:
            make_storage(f"{url.rsplit('/', 1)[0]}/{fresh}").engine.dispose()
        except BaseException as exc:  # noqa: BLE001 - the assertion reports it
            errors.append(exc)
    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    conn.cursor().execute(f"DROP DATABASE {fresh} WITH (FORCE)")
    conn.close()
    assert not errors, [str(e) for e in errors]


@pytest.mark.postgres
def test_two_workers_ride_out_a_database_restart_mid_trial(server, tmp_path, capfd):
    from vqbench.sweep import load_sweep, sweep

    url, pgctl = server
    study = f"restart-{uuid.uuid4().hex[:8]}"
    spec = load_sweep("gamma").with_base(dataset="cifar10-tiny", overrides=TINY)
    result: dict = {}

    def run() -> None:  # this process is the sweep's main one; its two workers are spawned processes
        try:
            result["sweep"] = sweep(spec, storage=url, study_name=study, out=tmp_path, workers=2, n_trials=N_TRIALS,
                                    log=lambda line: None)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            result["error"] = exc
    thread = threading.Thread(target=run)
    t0 = time.monotonic()
    thread.start()
    try:
        deadline, running = time.monotonic() + 180, []
        while time.monotonic() < deadline and thread.is_alive():
            trials = _trials(url, study)
            running = [t.number for t in trials if t.state == TrialState.RUNNING and "run_dir" in t.user_attrs]
            if running:  # a worker is inside fit, reporting every epoch
                break
            time.sleep(0.05)
        assert running, f"no trial was running before the deadline: {result}"
        print(f"stopping the server {time.monotonic() - t0:.1f} s after the sweep started")
        stop = subprocess.run([*pgctl, "stop", "-m", "fast"], capture_output=True, text=True, timeout=60)
        assert stop.returncode == 0, stop.stderr
        time.sleep(DOWN_S)
    finally:
        start = subprocess.run([*pgctl, "start"], capture_output=True, text=True, timeout=60)
        thread.join(timeout=300)
    assert start.returncode == 0, start.stdout + start.stderr
    stderr = capfd.readouterr().err
    print(stderr, f"sweep done {time.monotonic() - t0:.1f} s after it started")
    assert "error" not in result and result["sweep"].worker_exit_codes == [0, 0], (result, stderr)
    assert "Traceback" not in stderr

    trials = _trials(url, study)
    states = [t.state for t in trials]
    # The outcome first (without the retry, trials are left RUNNING and too few complete, though
    # both workers exit 0), then the lines that say the retry did it.
    assert states.count(TrialState.COMPLETE) == N_TRIALS, states
    assert not {TrialState.RUNNING, TrialState.WAITING} & set(states), states
    assert "storage connection lost" in stderr and "storage connection back after" in stderr, stderr
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    for t in trials:  # a failed trial is a lost one (no FAILURE: not a bad point) and was retried
        if t.state == TrialState.FAIL:
            assert "failure" not in t.user_attrs and t.number in retried, t
    originals = [tuple(sorted(t.params.items())) for t in complete if "retry_history" not in t.system_attrs]
    assert len(set(originals)) == len(originals)  # no trial ran twice
    for t in complete:
        run_dir = Path(t.user_attrs["run_dir"])
        assert (run_dir / "summary.json").is_file() and t.user_attrs["mse"] == t.value
    for number in running:  # the trials cut off by the restart finished, or were failed and retried
        t = trials[number]
        assert t.state == TrialState.COMPLETE or (t.state == TrialState.FAIL and number in retried), t
    print(f"{len(running)} trial(s) running at the stop, {states.count(TrialState.FAIL)} failed and retried, "
          f"{N_TRIALS} complete")


# --- the bound, without a server: a storage whose connections fail ------------------------
class _Outage:
    """Makes every new session of ``storage`` fail as a stopped server's would, until ``until``."""

    def __init__(self, storage, seconds: float) -> None:
        from sqlalchemy import exc as sa

        self.real, self.until = storage.scoped_session, time.monotonic() + seconds
        self.error = sa.OperationalError("SELECT 1", {}, ConnectionError("server closed the connection unexpectedly"))
        storage.scoped_session = self

    def __call__(self):
        if time.monotonic() < self.until:
            raise self.error
        return self.real()

    def __getattr__(self, name):  # remove(), used by remove_session
        return getattr(self.real, name)


def _storage(tmp_path, lines: list):
    from vqbench.sweep.storage import make_storage

    storage = make_storage(f"sqlite:///{tmp_path / 'study.db'}")
    storage.notify = lines.append
    return storage


def test_a_short_outage_is_waited_out_with_two_lines(tmp_path):
    lines: list[str] = []
    storage = _storage(tmp_path, lines)
    optuna.create_study(storage=storage, study_name="s")
    _Outage(storage, 0.8)
    assert [s.study_name for s in storage.get_all_studies()] == ["s"]
    assert len(lines) == 2 and lines[0].startswith("storage connection lost in get_all_studies (")
    assert "server closed the connection unexpectedly" in lines[0]
    assert lines[0].endswith("retrying for up to 120 s") and lines[1].startswith("storage connection back after ")


def test_beyond_the_bound_one_line_then_every_call_fails_at_once(tmp_path, monkeypatch):
    import vqbench.sweep.rdb as rdb

    monkeypatch.setattr(rdb, "RETRY_S", 1.0)
    storage = _storage(tmp_path, [])
    optuna.create_study(storage=storage, study_name="s")
    _Outage(storage, 3600)
    started = time.monotonic()
    with pytest.raises(rdb.StorageUnavailable) as info:
        storage.get_all_studies()
    assert time.monotonic() - started < 3
    message = str(info.value)
    assert "\n" not in message and info.value.exit_code == 1
    assert message.startswith("lost the sweep storage sqlite:///") and "no connection for 1 s" in message
    started = time.monotonic()
    with pytest.raises(rdb.StorageUnavailable):
        storage.get_study_id_from_name("s")
    assert time.monotonic() - started < 0.1  # given up: no second wait


def test_inside_the_study_lock_a_lost_connection_is_not_retried(tmp_path):
    storage = _storage(tmp_path, [])
    optuna.create_study(storage=storage, study_name="s")
    outage = _Outage(storage, 3600)
    storage.failfast = True  # what StudyLock sets while it is held
    with pytest.raises(Exception) as info:
        storage.get_all_studies()
    assert info.value.__cause__ is outage.error or info.value is outage.error
