"""Job states, the transitions allowed between them, and the SQLite job registry under ``runs/``.

Why typed: the state used to be a string written by three modules; a typo or a jump (SUCCEEDED → RUNNING)
went unnoticed. Every state change goes through ``Registry.transition``, which checks it against ``NEXT`` and
records it as an event with a reason. The registry is what makes submitting the same ``--job_id`` twice safe,
what ``status``/``list``/``cancel`` read, and what a restarted controller re-attaches from. Never holds secrets:
every reason is passed through the redaction hook before it is stored.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import Any

from qa_train.contract import FailureReason


class JobState(StrEnum):
    PENDING = "PENDING"  # recorded, nothing rented yet
    STARTING = "STARTING"  # walking the offers for the first instance
    RUNNING = "RUNNING"  # an instance of the job runs
    RECOVERING = "RECOVERING"  # the instance was lost; walking the offers again (managed jobs)
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    STOPPED_BUDGET = "STOPPED_BUDGET"  # --max_cost reached: asked to checkpoint, then destroyed (resumable)

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


class Notice(StrEnum):
    """An event that changes no state but that the controller must find again (never by its text)."""

    BUDGET_WARNING = "budget_warning"  # one per job, at 80% of --max_cost


Cause = FailureReason | Notice


def parse_cause(value: str | None) -> Cause | None:
    """A stored cause back as its enum; an unknown value (a newer launcher's) reads as None."""
    if not value:
        return None
    for kind in (FailureReason, Notice):
        try:
            return kind(value)
        except ValueError:
            continue
    return None


TERMINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.STOPPED_BUDGET})
# Non-terminal moves; any non-terminal state may also end (→ SUCCEEDED / FAILED / CANCELLED / STOPPED_BUDGET).
NEXT: dict[JobState, frozenset[JobState]] = {
    JobState.PENDING: frozenset({JobState.STARTING}),
    JobState.STARTING: frozenset({JobState.RUNNING, JobState.RECOVERING}),
    JobState.RUNNING: frozenset({JobState.RECOVERING}),
    JobState.RECOVERING: frozenset({JobState.RUNNING}),
}


class InvalidTransition(ValueError):
    """A state change the job's life does not allow (a bug in the caller, never a user error)."""


def allowed(old: JobState, new: JobState) -> bool:
    if old in TERMINAL:
        return False
    return new in TERMINAL or new in NEXT.get(old, frozenset())


def check_transition(old: JobState, new: JobState) -> None:
    if not allowed(old, new):
        raise InvalidTransition(f"job state {old} → {new} is not allowed")


@dataclass
class JobOptions:
    """How the job was asked to run (saved so ``resume`` and ``cancel`` need no flags). No secrets."""

    backend: str = "cheapest"  # as asked: local | vast | runpod | cheapest
    interruptible: bool = False
    max_price: float | None = None
    keep_instance: bool = False
    max_restarts: int = 3
    poll_s: float = 10.0
    ready_timeout_s: float = 1800.0
    backoff_s: float = 30.0
    backoff_max_s: float = 600.0
    capacity_wait_s: float = 6 * 3600.0
    max_cost_usd: float | None = None  # --max_cost: dollars over every launch before the job is stopped
    data_dir: str | None = None  # local backend: host folder mounted read-only at /data
    network: str | None = None  # local backend: docker network mode
    outputs_dir: str | None = None  # local backend: host folder bound at /runs (report, metrics, model stay)
    env_file: str | None = None  # where secrets were read from (a path, never the values)
    nodes: int = 1  # --nodes: > 1 is one RunPod Instant Cluster of that many nodes (launch/jobs/nodes.py)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> JobOptions:
        names = {f.name for f in fields(cls)}
        doc = json.loads(text) if text else {}
        if "budget_usd" in doc and "max_cost_usd" not in doc:  # a job recorded before the rename (--budget)
            doc["max_cost_usd"] = doc["budget_usd"]
        return cls(**{k: v for k, v in doc.items() if k in names})


@dataclass
class JobRow:
    job_id: str
    backend: str
    state: JobState
    gpu: str | None = None
    run_name: str | None = None
    run_uri: str | None = None  # s3://…/<run_name> when the job syncs, else None
    managed: bool = False
    instance_id: str | None = None
    price_per_hour: float | None = None
    restarts: int = 0
    last_step: int | None = None
    controller_pid: int | None = None
    controller_host: str | None = None
    heartbeat_at: float | None = None
    options: JobOptions = field(default_factory=JobOptions)
    created_at: float = 0.0
    updated_at: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["state"] = str(self.state)
        return d


@dataclass(frozen=True)
class Event:
    """One recorded change: ``reason`` for people, ``cause`` for code (the controller, ``status``)."""

    ts: float
    state: JobState
    reason: str
    instance_id: str | None
    cause: Cause | None = None


@dataclass(frozen=True)
class Launch:
    """One instance created for a job: the basis of its cost so far and of the resume adoption."""

    job_id: str
    n: int
    backend: str
    instance_id: str
    offer_id: str | None
    machine_id: str | None
    price_per_hour: float | None
    started_at: float
    ended_at: float | None
    end_reason: str | None

    @property
    def open(self) -> bool:
        return self.ended_at is None

    def cost(self, now: float) -> float:
        hours = max(0.0, ((self.ended_at or now) - self.started_at) / 3600.0)
        return (self.price_per_hour or 0.0) * hours


SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
  job_id TEXT PRIMARY KEY,
  backend TEXT NOT NULL,
  state TEXT NOT NULL,
  gpu TEXT,
  run_name TEXT,
  run_uri TEXT,
  managed INTEGER NOT NULL DEFAULT 0,
  instance_id TEXT,
  price_per_hour REAL,
  restarts INTEGER NOT NULL DEFAULT 0,
  last_step INTEGER,
  controller_pid INTEGER,
  controller_host TEXT,
  heartbeat_at REAL,
  options TEXT NOT NULL DEFAULT '{}',
  created_at REAL NOT NULL,
  updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  job_id TEXT NOT NULL,
  ts REAL NOT NULL,
  state TEXT NOT NULL,
  reason TEXT NOT NULL DEFAULT '',
  instance_id TEXT,
  cause TEXT
);
CREATE TABLE IF NOT EXISTS launches (
  job_id TEXT NOT NULL,
  n INTEGER NOT NULL,
  backend TEXT NOT NULL,
  instance_id TEXT NOT NULL,
  offer_id TEXT,
  machine_id TEXT,
  price_per_hour REAL,
  started_at REAL NOT NULL,
  ended_at REAL,
  end_reason TEXT,
  PRIMARY KEY (job_id, n)
);
CREATE TABLE IF NOT EXISTS blocklist (
  job_id TEXT NOT NULL,
  key TEXT NOT NULL,
  reason TEXT NOT NULL DEFAULT '',
  PRIMARY KEY (job_id, key)
);
"""
# Columns a caller may set with ``Registry.set`` (state only through ``transition``, instance through launches).
SETTABLE = ("restarts", "last_step", "controller_pid", "controller_host", "heartbeat_at", "backend")


class RegistryError(RuntimeError):
    """The registry file cannot be used (not a database, unreadable); one line, no traceback."""


def _default_redact(value: Any) -> Any:
    from launch.credentials import redact

    return redact(value)


class Registry:
    """SQLite under ``root`` (``runs/registry.sqlite``). ``clock`` stamps events and launches (tests inject
    one so cost and budget follow a fake clock). ``redact`` is applied to every reason before it is stored
    (default: every secret value the launcher has seen, ``launch.credentials.redact``)."""

    def __init__(
        self,
        root: str | Path = "runs",
        redact: Callable[[Any], Any] | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.root = Path(root)
        self.path = self.root / "registry.sqlite"
        self._redact = redact or _default_redact
        self.clock = clock
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with self._conn() as c:
                c.executescript(SCHEMA)
                cols = {r["name"] for r in c.execute("PRAGMA table_info(events)")}
                if "cause" not in cols:  # a registry written before causes were recorded
                    c.execute("ALTER TABLE events ADD COLUMN cause TEXT")
        except OSError as e:
            raise RegistryError(f"{self.path}: cannot create the job registry: {e.strerror or e}") from None

    def _problem(self, e: sqlite3.DatabaseError) -> RegistryError:
        """THE one line for a registry SQLite cannot use, whichever read or write met it: a file of garbage, a
        truncated copy, a damaged page (``database disk image is malformed``), a folder in its place."""
        text = " ".join(str(e).split())
        if isinstance(e, sqlite3.OperationalError) and ("locked" in text or "busy" in text):
            return RegistryError(f"{self.path} is locked by another process ({text}); try again")
        return RegistryError(
            f"{self.path} is not a job registry (damaged or not SQLite: {text}); move it away to start a new one"
        )

    @contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        """A connection whose SQLite errors (other than a constraint a caller relies on) become the one
        ``RegistryError`` line: every read and write goes through here."""
        try:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        except sqlite3.DatabaseError as e:
            raise self._problem(e) from None
        conn.row_factory = sqlite3.Row
        try:
            yield conn
        except sqlite3.IntegrityError:
            raise
        except sqlite3.DatabaseError as e:
            raise self._problem(e) from None
        finally:
            conn.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken up front (BEGIN IMMEDIATE): atomic across processes."""
        with self._conn() as c:
            c.execute("BEGIN IMMEDIATE")
            try:
                yield c
            except BaseException:
                c.execute("ROLLBACK")
                raise
            c.execute("COMMIT")

    # -- jobs ------------------------------------------------------------------------------------------------
    def claim(
        self,
        job_id: str,
        backend: str,
        *,
        gpu: str | None = None,
        run_name: str | None = None,
        run_uri: str | None = None,
        managed: bool = False,
        options: JobOptions | None = None,
        reason: str = "submitted",
    ) -> tuple[JobRow, bool]:
        """Insert the job as PENDING unless it exists. Returns (row, created)."""
        now = self.clock()
        opts = options or JobOptions(backend=backend)
        with self._tx() as c:
            if c.execute("SELECT 1 FROM jobs WHERE job_id=?", (job_id,)).fetchone() is None:
                c.execute(
                    "INSERT INTO jobs (job_id, backend, state, gpu, run_name, run_uri, managed, options,"
                    " created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
                    (job_id, backend, JobState.PENDING, gpu, run_name, run_uri, int(managed), opts.to_json(),
                     now, now),
                )  # fmt: skip
                c.execute(
                    "INSERT INTO events (job_id, ts, state, reason) VALUES (?,?,?,?)",
                    (job_id, now, JobState.PENDING, self._redact(reason)),
                )
                created = True
            else:
                created = False
        row = self.get(job_id)
        assert row is not None
        return row, created

    def transition(self, job_id: str, new: JobState, reason: str = "", cause: Cause | None = None) -> bool:
        """Move the job to ``new`` and record the event. Returns False, changing nothing, when the job has
        already ended (a user's CANCELLED wins over a controller that did not see it yet). Raises
        ``InvalidTransition`` for a move the job's life does not allow (a bug)."""
        new = JobState(new)
        now = self.clock()
        with self._tx() as c:
            row = c.execute("SELECT state, instance_id FROM jobs WHERE job_id=?", (job_id,)).fetchone()
            if row is None:
                raise KeyError(f"no job {job_id!r} in {self.path}")
            old = JobState(row["state"])
            if old in TERMINAL:
                return False
            check_transition(old, new)
            c.execute("UPDATE jobs SET state=?, updated_at=? WHERE job_id=?", (new, now, job_id))
            c.execute(
                "INSERT INTO events (job_id, ts, state, reason, instance_id, cause) VALUES (?,?,?,?,?,?)",
                (job_id, now, new, self._redact(reason), row["instance_id"], cause and str(cause)),
            )
        return True

    def set(self, job_id: str, **values: Any) -> None:
        """Set typed columns (``SETTABLE``); the state changes only through ``transition``."""
        bad = set(values) - set(SETTABLE)
        if bad:
            raise ValueError(f"not settable: {', '.join(sorted(bad))}")
        if not values:
            return
        sets = ", ".join(f"{k}=?" for k in values)
        with self._tx() as c:
            c.execute(
                f"UPDATE jobs SET {sets}, updated_at=? WHERE job_id=?",
                (*values.values(), self.clock(), job_id),
            )

    def swap_lease(
        self, job_id: str, expect: tuple[int | None, str | None], new: tuple[int | None, str | None]
    ) -> bool:
        """Compare-and-set of the controller (pid, host): whoever read the old holder and decided it is dead
        takes the lease only if nobody else took it meanwhile."""
        with self._tx() as c:
            row = c.execute(
                "SELECT controller_pid, controller_host FROM jobs WHERE job_id=?", (job_id,)
            ).fetchone()
            if row is None or (row["controller_pid"], row["controller_host"]) != expect:
                return False
            c.execute(
                "UPDATE jobs SET controller_pid=?, controller_host=?, heartbeat_at=? WHERE job_id=?",
                (*new, self.clock(), job_id),
            )
        return True

    def get(self, job_id: str) -> JobRow | None:
        with self._conn() as c:
            row = c.execute("SELECT * FROM jobs WHERE job_id=?", (job_id,)).fetchone()
        return _row(row) if row else None

    def list(self) -> list[JobRow]:
        rows, problem = self.list_readable()
        if problem is not None:
            raise RegistryError(problem)
        return rows

    def list_readable(self) -> tuple[list[JobRow], str | None]:
        """Every job row SQLite can still read, and the one error line when some could not be (a damaged
        page): ``list`` shows what is left instead of nothing. Rows are read in rowid order; past a damaged
        leaf page the scan resumes at growing rowid gaps (the B-tree's inner pages still lead past it)."""
        rows: list[JobRow] = []
        problem: str | None = None
        after, gap = -(2**63), 1
        try:
            with self._conn() as c:
                for _ in range(64):
                    try:
                        cur = c.execute(
                            "SELECT rowid AS _rowid, * FROM jobs WHERE rowid > ? ORDER BY rowid", (after,)
                        )
                        for r in cur:
                            after, gap = r["_rowid"], 1
                            try:
                                rows.append(_row(r))
                            except (ValueError, TypeError, KeyError) as e:  # a row of garbage
                                bad = self._problem(sqlite3.DatabaseError(f"unreadable row: {e}"))
                                problem = problem or str(bad)
                        break
                    except sqlite3.IntegrityError:
                        raise
                    except sqlite3.DatabaseError as e:
                        problem = problem or str(self._problem(e))
                        after, gap = max(after, 0) + gap, gap * 4
        except RegistryError as e:
            problem = problem or str(e)
        return sorted(rows, key=lambda r: r.created_at), problem

    def events(self, job_id: str) -> list[Event]:
        with self._conn() as c:
            rows = c.execute(
                "SELECT ts, state, reason, instance_id, cause FROM events WHERE job_id=? ORDER BY id",
                (job_id,),
            ).fetchall()
        return [
            Event(r["ts"], JobState(r["state"]), r["reason"], r["instance_id"], parse_cause(r["cause"]))
            for r in rows
        ]

    def note(self, job_id: str, reason: str, cause: Cause | None = None) -> None:
        """Record an event without a state change (e.g. the 80% budget warning): kept with the job's history,
        and what a restarted controller reads to not warn twice."""
        with self._tx() as c:
            row = c.execute("SELECT state, instance_id FROM jobs WHERE job_id=?", (job_id,)).fetchone()
            if row is None:
                raise KeyError(f"no job {job_id!r} in {self.path}")
            c.execute(
                "INSERT INTO events (job_id, ts, state, reason, instance_id, cause) VALUES (?,?,?,?,?,?)",
                (
                    job_id,
                    self.clock(),
                    row["state"],
                    self._redact(reason),
                    row["instance_id"],
                    cause and str(cause),
                ),
            )

    def last_reason(self, job_id: str) -> str:
        ev = self.events(job_id)
        return ev[-1].reason if ev else ""

    def failure(self, job_id: str) -> FailureReason | None:
        """Why the job ended, when it ended otherwise than SUCCEEDED: the cause of its terminal event."""
        ev = [e for e in self.events(job_id) if e.state in TERMINAL and e.state != JobState.SUCCEEDED]
        cause = ev[-1].cause if ev else None
        return cause if isinstance(cause, FailureReason) else None

    # -- launches --------------------------------------------------------------------------------------------
    def add_launch(
        self,
        job_id: str,
        *,
        backend: str,
        instance_id: str,
        offer_id: str | None = None,
        machine_id: str | None = None,
        price_per_hour: float | None = None,
    ) -> int:
        """Record a new instance of the job and make it the job's current one (cost starts now)."""
        now = self.clock()
        with self._tx() as c:
            n = c.execute(
                "SELECT COALESCE(MAX(n), 0) + 1 FROM launches WHERE job_id=?", (job_id,)
            ).fetchone()[0]
            c.execute(
                "INSERT INTO launches (job_id, n, backend, instance_id, offer_id, machine_id, price_per_hour,"
                " started_at) VALUES (?,?,?,?,?,?,?,?)",
                (job_id, n, backend, instance_id, offer_id, machine_id, price_per_hour, now),
            )
            c.execute(
                "UPDATE jobs SET backend=?, instance_id=?, price_per_hour=?, updated_at=? WHERE job_id=?",
                (backend, instance_id, price_per_hour, now, job_id),
            )
        return int(n)

    def end_launch(self, job_id: str, instance_id: str, reason: str) -> None:
        """Close the launch of ``instance_id`` (idempotent: the first end time and reason stay)."""
        with self._tx() as c:
            c.execute(
                "UPDATE launches SET ended_at=?, end_reason=? WHERE job_id=? AND instance_id=? AND ended_at IS NULL",
                (self.clock(), self._redact(reason), job_id, instance_id),
            )

    def record_machine(self, job_id: str, instance_id: str, machine_id: str) -> bool:
        """Note the machine a launch landed on, once it is known (RunPod names it only in the pod's status;
        vast in the offer too). The first one recorded stays. True when this call recorded it."""
        with self._tx() as c:
            cur = c.execute(
                "UPDATE launches SET machine_id=? WHERE job_id=? AND instance_id=? AND machine_id IS NULL",
                (machine_id, job_id, instance_id),
            )
            return cur.rowcount > 0

    def launches(self, job_id: str) -> list[Launch]:
        with self._conn() as c:
            rows = c.execute("SELECT * FROM launches WHERE job_id=? ORDER BY n", (job_id,)).fetchall()
        return [Launch(**dict(r)) for r in rows]

    def open_launches(self, job_id: str) -> list[Launch]:
        return [x for x in self.launches(job_id) if x.open]

    def cost(self, job_id: str, now: float | None = None) -> float:
        """$/h × hours summed over the job's launches (an open launch counts up to ``now``)."""
        now = self.clock() if now is None else now
        return sum(x.cost(now) for x in self.launches(job_id))

    # -- failed machines -------------------------------------------------------------------------------------
    def block(self, job_id: str, keys: set[str] | list[str], reason: str) -> None:
        with self._tx() as c:
            for k in keys:
                c.execute(
                    "INSERT OR IGNORE INTO blocklist (job_id, key, reason) VALUES (?,?,?)",
                    (job_id, k, self._redact(reason)),
                )

    def blocked(self, job_id: str) -> set[str]:
        with self._conn() as c:
            rows = c.execute("SELECT key FROM blocklist WHERE job_id=?", (job_id,)).fetchall()
        return {r["key"] for r in rows}


def _row(r: sqlite3.Row) -> JobRow:
    d = dict(r)
    d.pop("_rowid", None)
    d["state"] = JobState(d["state"])
    d["managed"] = bool(d["managed"])
    d["options"] = JobOptions.from_json(d.get("options"))
    return JobRow(**d)
