"""Where a sweep's Optuna study lives, the lock that keeps its trial budget exact, lost trials.

- A journal file by default (Optuna's ``JournalFileBackend``): safe for many processes on
  one machine. SQLite is not safe for parallel workers, so it is never the default.
- Any RDB URL (``postgresql://…``) for many machines, with heartbeats: a trial whose
  worker stops beating is failed and retried (``RetryHeartbeatStaleTrialCallback``).
- The budget: ``MaxTrialsCallback`` stops a worker only *after* its trial ends, so N
  workers overshoot by up to N−1 trials. Here a worker takes a storage-wide lock, counts
  the trials, and creates its trial only while the lock is held: exactly ``n_trials``.
- Journal files have no heartbeat: a RUNNING trial whose worker (host, pid, process start
  time) is gone is failed and re-queued with the same parameters when the study is opened.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import socket
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from ..errors import UserError, first_line
from .rdb import PatientRDBStorage, first_opener_wins, is_connection_error

HEARTBEAT_S, GRACE_S, MAX_RETRY = 30, 120, 2
FAILURE = "failure"  # user attr: why the objective failed (such a trial counts as done, no retry)
LOST = "lost"  # user attr: why the worker lost the trial (it is re-queued)
RDB_PREFIXES = ("postgresql", "mysql", "sqlite", "oracle", "mssql")
DEFAULT_OUT = "results/sweeps"


def default_storage(out: str | Path) -> str:
    """One journal file for every study under the results folder."""
    return str(Path(out).expanduser() / "optuna.journal")


def default_study_name(spec: Any) -> str:
    return f"{spec.name}-{spec.dataset}"


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    if "://" in url and "@" in url.split("://", 1)[1]:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}" if ":" in creds else url
    return url


def is_rdb(url: str) -> bool:
    return "://" in url and url.split("://", 1)[0].split("+", 1)[0] in RDB_PREFIXES


def journal_path(url: str) -> Path:
    return Path(url.split(":", 1)[1] if url.startswith(("journal:", "file:")) else url).expanduser()


def with_driver(url: str) -> str:
    """``postgresql://`` with a driver that is installed: SQLAlchemy 2.1 defaults to psycopg 3,
    vqbench's extra installs psycopg2; an explicit ``postgresql+DRIVER://`` is kept."""
    if not url.startswith("postgresql://"):
        return url
    import importlib.util

    if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
        return "postgresql+psycopg2://" + url[len("postgresql://"):]
    return url


def make_storage(url: str) -> BaseStorage:
    """A storage from an RDB URL or a journal file path (``journal:PATH`` also works)."""
    if "://" in url and not is_rdb(url):
        raise UserError(f"storage {redact(url)!r} is neither an RDB URL (postgresql://, mysql://, sqlite:///) "
                        "nor a journal file path")
    try:
        if is_rdb(url):
            kwargs: dict[str, Any] = {"pool_pre_ping": True}  # a pooled connection from before a restart is dead
            if url.startswith("postgresql"):
                kwargs["connect_args"] = {"connect_timeout": 10}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return first_opener_wins(lambda: PatientRDBStorage(
                    with_driver(url), display_url=redact(url), engine_kwargs=kwargs, heartbeat_interval=HEARTBEAT_S,
                    grace_period=GRACE_S,
                    heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)))
        path = journal_path(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    except UserError:
        raise
    except Exception as exc:  # driver errors vary (psycopg2, sqlalchemy, OSError): one line each
        raise UserError(f"cannot open the sweep storage {redact(url)}: {first_line(exc)}") from exc


class StudyLock:
    """A lock shared by every worker of one study: a file lock beside a journal or SQLite file,
    a PostgreSQL advisory lock (or MySQL GET_LOCK) on an RDB. ``release()`` may come early."""

    def __init__(self, storage: BaseStorage, url: str, study_name: str) -> None:
        self.url, self.study_name = url, study_name
        self._storage, self._fh, self._conn, self._held = storage, None, None, False

    def acquire(self) -> "StudyLock":
        if is_rdb(self.url) and not self.url.startswith("sqlite"):
            key = int.from_bytes(hashlib.sha256(self.study_name.encode()).digest()[:8], "big", signed=True)
            dialect = self.url.split("://", 1)[0].split("+", 1)[0]
            if dialect not in ("postgresql", "mysql"):
                # No portable lock: the budget may overshoot by workers − 1.
                return self
            from sqlalchemy import text

            sql = "SELECT pg_advisory_lock(:k)" if dialect == "postgresql" else "SELECT GET_LOCK(:k, -1)"

            def lock() -> Any:
                conn = self._storage.engine.connect()  # type: ignore[attr-defined]
                try:
                    conn.execute(text(sql), {"k": key if dialect == "postgresql" else f"vqbench-{key}"})
                except BaseException:
                    conn.close()
                    raise
                return conn

            patient = getattr(self._storage, "patiently", None)  # waits out a database restart
            self._conn = patient(lock, "taking the study lock") if patient else lock()
            self._storage.failfast = True  # a lost connection now lost the lock too: no silent retries
        else:
            target = self.url.split("///", 1)[1] if self.url.startswith("sqlite") else str(journal_path(self.url))
            self._fh = open(f"{target}.vqbench-lock", "a")
            fcntl.flock(self._fh, fcntl.LOCK_EX)
        self._held = True
        return self

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        if self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None
        if self._conn is not None:
            from sqlalchemy import text

            self._storage.failfast = False
            try:
                sql = "SELECT pg_advisory_unlock_all()" if self.url.startswith("postgresql") else "SELECT RELEASE_ALL_LOCKS()"
                self._conn.execute(text(sql))
            except Exception as exc:
                if not is_connection_error(exc):
                    raise  # else the session is gone, and its lock with it
            finally:
                with contextlib.suppress(Exception):
                    self._conn.close()
                self._conn = None

    def __enter__(self) -> "StudyLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def budget(study: optuna.Study) -> dict[str, int]:
    """Trials that use the budget: finished (complete, pruned, failed in the objective) + running."""
    trials = study.get_trials(deepcopy=False)
    states = [t.state for t in trials]
    failed_done = sum(t.state == TrialState.FAIL and FAILURE in t.user_attrs for t in trials)
    counts = {s.name.lower(): states.count(s) for s in TrialState}
    counts["used"] = counts["complete"] + counts["pruned"] + counts["running"] + failed_done
    return counts


def worker_identity() -> dict[str, Any]:
    """Who runs a trial: enough to tell later, on this host, whether that process is gone."""
    return {"worker_host": socket.gethostname(), "worker_pid": os.getpid(), "worker_start": _start_time(os.getpid())}


def _start_time(pid: int) -> str | None:
    # Field 22 of /proc/PID/stat: the start time in clock ticks since boot; a reused pid differs.
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(attrs: dict[str, Any]) -> bool:
    pid = attrs.get("worker_pid")
    if attrs.get("worker_host") != socket.gethostname() or not isinstance(pid, int):
        return True  # another machine's worker, or no record yet: cannot tell, assume alive
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    started = attrs.get("worker_start")
    return started is None or _start_time(pid) in (None, started)


def recover_lost_trials(study: optuna.Study, max_retry: int = MAX_RETRY) -> list[int]:
    """Fail RUNNING trials of dead local workers (journal; RDB heartbeats do this themselves),
    then re-queue every lost failed trial not re-queued yet. Call under the study lock."""
    storage, study_id = study._storage, study._study_id
    if not isinstance(storage, RDBStorage):
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if not _alive(t.user_attrs):
                tid = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
                storage.set_trial_user_attr(tid, LOST, f"worker {t.user_attrs.get('worker_pid')} died")
                storage.set_trial_state_values(tid, TrialState.FAIL)
    trials = study.get_trials(deepcopy=False)
    requeued = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    retried = []
    for t in trials:
        if t.state != TrialState.FAIL or FAILURE in t.user_attrs or t.number in requeued or not t.params:
            continue
        history = [*t.system_attrs.get("retry_history", []), t.number]
        if len(history) > max_retry:
            continue
        study.add_trial(optuna.trial.create_trial(
            state=TrialState.WAITING, params=t.params, distributions=t.distributions,
            system_attrs={"failed_trial": history[0], "retry_history": history}))
        retried.append(t.number)
    return retried
