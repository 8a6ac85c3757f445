"""The one Optuna store shared by the API, the workers and the dashboard.

Everything a worker needs lives in it: the validated spec, the owner and the lifecycle of a
study are the study's user attributes (keys below); trials are Optuna trials. The API creates
a study *with all its trials already queued* (``WAITING``), so the trial count a team asked for
is fixed at submission: workers only ever claim queued trials (``ClaimOnlyStorage``), never
create new ones, and a trial retried after its worker died is queued by Optuna's
``RetryHeartbeatStaleTrialCallback`` as a copy of the failed one.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import sqlite3
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

import optuna
import sqlalchemy as sa
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages._rdb import models as optuna_models
from optuna.trial import FrozenTrial, TrialState

log = logging.getLogger("tailtune.store")
T = TypeVar("T")

DEFAULT_URL = "sqlite:///tailtune.db"

ATTR_SPEC = "tailtune.spec"
ATTR_OWNER = "tailtune.owner"
ATTR_TEAM = "tailtune.team"
ATTR_CANCELLED = "tailtune.cancelled"
ATTR_CREATED = "tailtune.created"

# Trial user attributes written by workers.
ATTR_FAIL_REASON = "fail_reason"
ATTR_WORKER = "worker"

HEARTBEAT_INTERVAL_S = 10
GRACE_PERIOD_S = 30
MAX_RETRY = 3


class StudyState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"


class StoreUnavailable(RuntimeError):
    """The storage URL points at nothing usable; the message says what to do."""


class NoQueuedTrial(RuntimeError):
    """A worker tried to start a trial of a study whose queued trials are all taken."""


def is_transient_store_error(exc: BaseException) -> bool:
    """A lost connection, a restarting server or a locked SQLite file: worth trying again.

    Optuna wraps some driver errors in ``StorageInternalError``, so the causes are looked at too.
    """
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return False
        if isinstance(seen, sa.exc.DBAPIError) and seen.connection_invalidated:
            return True
        if isinstance(seen, (sa.exc.OperationalError, sa.exc.InterfaceError, sqlite3.OperationalError)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def retry_store(fn: Callable[[], T], *, within_s: float, what: str) -> T:
    """Run ``fn``; on a transient store error try again with back-off for up to ``within_s``.

    Workers wrap their writes during a trial in this, so a database restart of a few seconds
    costs a pause, not the trial.
    """
    deadline = time.monotonic() + within_s
    delay = 0.2
    while True:
        try:
            return fn()
        except Exception as exc:
            if not is_transient_store_error(exc) or time.monotonic() + delay > deadline:
                raise
            log.warning("store unavailable while %s (%s); retrying in %.1fs", what,
                        type(exc).__name__, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


class ClaimOnlyStorage(RDBStorage):
    """A worker's storage: it claims queued trials and never creates fresh ones.

    ``Study.optimize`` asks for a trial by popping a ``WAITING`` one (an atomic
    WAITING -> RUNNING update) and, when none is left, by creating a new trial; here that second
    path raises ``NoQueuedTrial`` instead, so racing workers cannot run more trials than a
    study asked for. Copies made from a template (retries, enqueued trials) are allowed.
    """

    def _create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> FrozenTrial:
        # Optuna's _CachedStorage calls this private method directly, not create_new_trial,
        # so this is the one place every new trial passes through (a test pins it).
        if template_trial is None:
            raise NoQueuedTrial(f"study {study_id} has no queued trial left")
        return super()._create_new_trial(study_id, template_trial)

    def record_heartbeat(self, trial_id: int) -> None:
        # Optuna's heartbeat thread dies on the first exception; a store that is briefly down
        # must not end it, or a trial that survives the outage would later count as stale.
        try:
            super().record_heartbeat(trial_id)
        except Exception as exc:
            if not is_transient_store_error(exc):
                raise
            log.warning("heartbeat of trial %d not recorded: the store is unavailable (%s)",
                        trial_id, type(exc).__name__)

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        """Optuna's stale trials, plus RUNNING trials that never got a heartbeat.

        A worker that dies between claiming a trial and its first heartbeat (or loses the store
        in that moment) leaves a RUNNING trial Optuna would never call stale; such a trial is
        stale once it started longer than the grace period ago.
        """
        stale = super()._get_stale_trial_ids(study_id)
        assert self.grace_period is not None
        # Optuna stores trial datetimes as naive UTC.
        cutoff = dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(seconds=self.grace_period)
        trial, heartbeat = optuna_models.TrialModel, optuna_models.TrialHeartbeatModel
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(trial.trial_id)
                .outerjoin(heartbeat, heartbeat.trial_id == trial.trial_id)
                .where(trial.study_id == study_id, trial.state == TrialState.RUNNING,
                       heartbeat.trial_heartbeat_id.is_(None), trial._datetime_start_utc < cutoff)
            ).scalars().all()
        return sorted(set(stale) | set(rows))


def _prepare_sqlite(url: str) -> None:
    """WAL mode persists in the file; set it once so readers never block the writer."""
    path = sa.engine.make_url(url).database
    if path and path != ":memory:":
        with sqlite3.connect(path, timeout=30) as conn:
            conn.execute("PRAGMA journal_mode=WAL")


def _begin_immediate(engine: sa.engine.Engine) -> None:
    """Open every SQLite transaction with ``BEGIN IMMEDIATE``.

    A deferred transaction that reads and then writes cannot wait for the write lock: when
    another process wrote in between, SQLite answers "database is locked" at once, whatever
    the busy timeout. Taking the lock at ``BEGIN`` makes every writer wait its turn instead
    (the driver's own transaction handling is switched off in ``connect_args``).
    """

    @sa.event.listens_for(engine, "begin")
    def _begin(conn: sa.engine.Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def make_storage(
    url: str,
    *,
    worker: bool = False,
    heartbeat_interval: int = HEARTBEAT_INTERVAL_S,
    grace_period: int = GRACE_PERIOD_S,
    create: bool = True,
) -> RDBStorage:
    """Open the store at ``url``.

    ``worker=True`` gives a ``ClaimOnlyStorage`` with heartbeats and the retry callback.
    ``create=False`` refuses a database that has no tailtune store yet instead of writing
    tables into it: a worker pointed at the wrong URL must write nothing.
    """
    is_sqlite = url.startswith("sqlite")
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if is_sqlite:
        engine_kwargs["connect_args"] = {"timeout": 60, "isolation_level": None}
    else:
        engine_kwargs["connect_args"] = {"connect_timeout": 10}
    try:
        if not create:
            _require_existing_store(url, engine_kwargs)
        if is_sqlite:
            _prepare_sqlite(url)
        cls = ClaimOnlyStorage if worker else RDBStorage
        kwargs: dict[str, Any] = {}
        if worker:
            kwargs = dict(
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY),
            )
        storage = cls(url, engine_kwargs=engine_kwargs, skip_table_creation=not create, **kwargs)
        if is_sqlite:
            _begin_immediate(storage.engine)
        return storage
    except StoreUnavailable:
        raise
    except (sa.exc.SQLAlchemyError, sqlite3.Error) as exc:
        raise StoreUnavailable(f"cannot open the store at {_redact(url)}: {exc.__class__.__name__}: "
                               f"{str(exc).splitlines()[0]}") from exc
    except RuntimeError as exc:  # Optuna's schema-version check
        raise StoreUnavailable(f"the store at {_redact(url)} has a schema this tailtune cannot use: "
                               f"{exc} Run the tailtune release that matches the store, or upgrade "
                               "the store (`optuna storage upgrade --storage URL`) when it is "
                               "older.") from exc


def _redact(url: str) -> str:
    return sa.engine.make_url(url).render_as_string(hide_password=True)


def _require_existing_store(url: str, engine_kwargs: dict[str, Any]) -> None:
    """Refuse, without writing anything, a URL that holds no initialised Optuna store.

    Optuna stamps a missing schema version on open; a worker must not, so the version rows
    are checked here first (a wrong version is then Optuna's own check's to report).
    """
    missing = (f"no tailtune store at {_redact(url)}: start `tailtune serve` (or `tailtune up`) with "
               "this URL first, or pass the right --storage")
    if url.startswith("sqlite"):
        path = sa.engine.make_url(url).database
        if not path or not os.path.exists(path):
            raise StoreUnavailable(missing)
    engine = sa.create_engine(url, **engine_kwargs)
    try:
        with engine.connect() as conn:
            tables = set(sa.inspect(conn).get_table_names())
            if not {"studies", "trials", "version_info", "alembic_version"} <= tables:
                raise StoreUnavailable(missing)
            for table in ("version_info", "alembic_version"):
                if conn.execute(sa.text(f"SELECT COUNT(*) FROM {table}")).scalar_one() == 0:
                    raise StoreUnavailable(f"the store at {_redact(url)} has no schema version "
                                           f"({table} is empty); it was not made by tailtune")
    finally:
        engine.dispose()


@dataclass(frozen=True)
class TrialCounts:
    waiting: int = 0
    running: int = 0
    complete: int = 0
    pruned: int = 0
    fail: int = 0

    @property
    def total(self) -> int:
        return self.waiting + self.running + self.complete + self.pruned + self.fail

    @property
    def finished(self) -> int:
        return self.complete + self.pruned + self.fail


_STATE_FIELD = {
    TrialState.WAITING.name: "waiting",
    TrialState.RUNNING.name: "running",
    TrialState.COMPLETE.name: "complete",
    TrialState.PRUNED.name: "pruned",
    TrialState.FAIL.name: "fail",
}


def connected(storage: RDBStorage, conn: sa.Connection | None = None,
              ) -> contextlib.AbstractContextManager[sa.Connection]:
    """``conn`` as it is, or a connection of the store's pool for the ``with`` block."""
    return contextlib.nullcontext(conn) if conn is not None else storage.engine.connect()


def trial_counts(storage: RDBStorage, study_ids: list[int] | None = None, *,
                 conn: sa.Connection | None = None) -> dict[int, TrialCounts]:
    """Trials per state for each study, in one ``GROUP BY`` query on Optuna's ``trials`` table.

    Optuna's own ``get_n_trials`` loads every trial; this stays cheap at thousands of trials.
    ``conn`` runs it on a connection the caller already holds (one pool check-out, and its
    liveness ping, per request instead of one per query).
    """
    query = "SELECT study_id, state, COUNT(*) FROM trials"
    params: dict[str, Any] = {}
    if study_ids is not None:
        if not study_ids:
            return {}
        query += " WHERE study_id IN :ids"
        params["ids"] = list(study_ids)
    query += " GROUP BY study_id, state"
    stmt = sa.text(query)
    if study_ids is not None:
        stmt = stmt.bindparams(sa.bindparam("ids", expanding=True))
    counts: dict[int, dict[str, int]] = defaultdict(dict)
    with connected(storage, conn) as db:
        for study_id, state, n in db.execute(stmt, params):
            name = state.name if hasattr(state, "name") else str(state)
            counts[study_id][_STATE_FIELD[name]] = n
    return {sid: TrialCounts(**c) for sid, c in counts.items()}


def study_state(user_attrs: dict[str, Any], counts: TrialCounts) -> StudyState:
    """Derived, never stored: nothing can disagree with the trials themselves."""
    if user_attrs.get(ATTR_CANCELLED):
        return StudyState.CANCELLED
    if counts.waiting == 0 and counts.running == 0 and counts.total > 0:
        return StudyState.COMPLETED if counts.complete + counts.pruned > 0 else StudyState.FAILED
    if counts.running or counts.finished:
        return StudyState.RUNNING
    return StudyState.QUEUED


def is_tailtune_study(user_attrs: dict[str, Any]) -> bool:
    return ATTR_SPEC in user_attrs


def load_study(storage: RDBStorage, name: str, **kwargs: Any) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=storage, **kwargs)
