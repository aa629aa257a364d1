"""An Optuna RDB storage that rides out a database restart (a shared cluster's weekly one).

Every storage call that fails on a lost connection (the server stopped, restarted, a
network blip) is retried on a fresh connection with bounded exponential backoff
(``pool_pre_ping`` drops the dead pooled connections); after ``RETRY_S`` seconds without
a connection the worker gives up with one :class:`StorageUnavailable` line, and the trials
it was running are failed by their stale heartbeats and retried by another worker.

One exception: while a worker holds the study lock (counting the budget, creating its
trial) a lost connection also lost the lock (a PostgreSQL advisory lock ends with its
session), so those calls fail at once and the worker starts the locked section over
(:func:`vqbench.sweep.worker.run_worker`): retrying them without the lock could overshoot
the budget.
"""
from __future__ import annotations

import functools
import os
import threading
import time
from typing import Any, Callable

from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RDBStorage

from ..errors import UserError, exception_line

RETRY_S = float(os.environ.get("VQBENCH_STORAGE_RETRY_S", 120))  # how long a worker waits for the database


class StorageUnavailable(UserError):
    """The sweep's database stayed unreachable for ``RETRY_S``: exit 1 (not the user's mistake)."""

    exit_code = 1


def connection_error(exc: BaseException | None) -> BaseException | None:
    """The lost-connection error in ``exc`` or what caused it (Optuna wraps SQLAlchemy's), or None."""
    from sqlalchemy import exc as sa

    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, StorageUnavailable):
            return None  # given up already: not one to retry
        seen.add(id(exc))
        if isinstance(exc, (sa.OperationalError, sa.InterfaceError)) or (
                isinstance(exc, sa.DBAPIError) and exc.connection_invalidated):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def is_connection_error(exc: BaseException | None) -> bool:
    return connection_error(exc) is not None


def lost_connection_line(exc: BaseException) -> str:
    """The driver's first line, e.g. 'OperationalError: server closed the connection unexpectedly'."""
    cause = connection_error(exc) or exc
    return exception_line(getattr(cause, "orig", None) or cause)[:160]


def first_opener_wins(open_storage: Callable[[], Any], attempts: int = 5) -> Any:
    """``open_storage()``, again when it lost the race to create Optuna's tables on a fresh
    database (workers or machines starting at once: ``CREATE TYPE studydirection`` twice is
    a UniqueViolation); the next attempt finds the tables and creates nothing."""
    from sqlalchemy import exc as sa

    for attempt in range(attempts):
        try:
            return open_storage()
        except (sa.IntegrityError, sa.ProgrammingError) as exc:
            text = str(exc).lower()
            if attempt == attempts - 1 or not ("duplicate" in text or "already exists" in text):
                raise
            time.sleep(0.1 * (attempt + 1))


class PatientRDBStorage(RDBStorage):
    """``RDBStorage`` whose calls wait for the database to come back (see the module)."""

    def __init__(self, url: str, *args: Any, display_url: str | None = None, **kwargs: Any) -> None:
        super().__init__(url, *args, **kwargs)
        self.display_url = display_url or url
        self.failfast = False  # set while the study lock is held
        self.notify: Callable[[str], None] = lambda line: None  # a worker's log line per outage
        self.gave_up: StorageUnavailable | None = None
        self._local = threading.local()

    def patiently(self, call: Callable[[], Any], what: str = "a storage call") -> Any:
        """``call()``, retried while the connection is lost, for up to ``RETRY_S`` seconds."""
        if self.gave_up is not None:
            raise self.gave_up
        if getattr(self._local, "depth", 0):
            return call()
        self._local.depth = 1
        try:
            started, delay, announced = time.monotonic(), 0.25, False
            while True:
                try:
                    result = call()
                    if announced:
                        self.notify(f"storage connection back after {time.monotonic() - started:.1f} s")
                    return result
                except Exception as exc:
                    waited = time.monotonic() - started
                    if self.failfast or not is_connection_error(exc):
                        raise
                    if waited + delay > RETRY_S:
                        self.gave_up = StorageUnavailable(
                            f"lost the sweep storage {self.display_url}: no connection for {waited:.0f} s "
                            f"({lost_connection_line(exc)}); this worker stops, its running trial is failed "
                            "and retried by the next worker that opens the study")
                        raise self.gave_up from exc
                    if not announced:
                        self.notify(f"storage connection lost in {what} ({lost_connection_line(exc)}); "
                                    f"retrying for up to {RETRY_S:.0f} s")
                        announced = True
                    time.sleep(delay)
                    delay = min(delay * 2, 2.0)
        finally:
            self._local.depth = 0

    def record_heartbeat(self, trial_id: int) -> None:
        # In Optuna's heartbeat thread: an exception there would print a traceback. A missed
        # beat costs nothing but the risk of the trial being declared stale after the grace period.
        try:
            self.patiently(lambda: RDBStorage.record_heartbeat(self, trial_id), "a heartbeat")
        except Exception:
            pass


    def set_trial_state_values(self, trial_id: int, state: Any, values: Any = None) -> bool:
        attempts = []

        def call() -> bool:
            attempts.append(1)
            try:
                return RDBStorage.set_trial_state_values(self, trial_id, state, values)
            except UpdateFinishedTrialError:
                # A retry after the connection dropped just after the first attempt committed.
                if len(attempts) > 1 and RDBStorage.get_trial(self, trial_id).state == state:
                    return True
                raise
        return self.patiently(call, "set_trial_state_values")


# Every call that talks to the database: BaseStorage's API and the private ones Optuna's
# _CachedStorage calls on its backend. Calls nested in another (create_new_trial →
# _create_new_trial) retry only at the outermost level.
DB_CALLS = ("create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr",
            "get_study_id_from_name", "get_study_name_from_id", "get_study_directions", "get_study_user_attrs",
            "get_study_system_attrs", "get_all_studies", "create_new_trial", "_create_new_trial", "set_trial_param",
            "_set_trial_param", "get_trial_id_from_study_id_trial_number", "get_trial_number_from_id",
            "get_trial_param", "set_trial_intermediate_value", "set_trial_user_attr",
            "set_trial_system_attr", "get_trial", "get_all_trials", "_get_trials", "get_n_trials", "get_best_trial",
            "_get_best_trial_id", "get_trial_params", "get_trial_user_attrs", "get_trial_system_attrs",
            "_get_stale_trial_ids")


def _patient(name: str) -> Callable[..., Any]:
    method = getattr(RDBStorage, name)

    @functools.wraps(method)
    def call(self: PatientRDBStorage, *args: Any, **kwargs: Any) -> Any:
        return self.patiently(lambda: method(self, *args, **kwargs), name)
    return call


for _name in DB_CALLS:
    setattr(PatientRDBStorage, _name, _patient(_name))
