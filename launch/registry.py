"""The job registry: SQLite under ``runs/`` recording job id, backend, instance id and state.

It is what makes submitting the same ``--job_id`` twice safe (the second call finds the job and creates
nothing) and what ``status``/``logs``/``cancel``/``list`` read. Every state change is also kept as an event
(with a reason) so a controller (managed jobs) can rebuild history. Never holds secrets.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
  job_id TEXT PRIMARY KEY,
  backend TEXT NOT NULL,
  instance_id TEXT,
  state TEXT NOT NULL,
  gpu TEXT,
  run_name TEXT,
  price_per_hour REAL,
  created_at REAL NOT NULL,
  updated_at REAL NOT NULL,
  info TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS events (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  job_id TEXT NOT NULL,
  ts REAL NOT NULL,
  state TEXT NOT NULL,
  reason TEXT NOT NULL DEFAULT '',
  instance_id TEXT
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
"""
ACTIVE = ("SUBMITTING", "PENDING", "RUNNING")
# Managed jobs (launch/managed.py) use their own states in the same column.
MANAGED_STATES = ("PENDING", "STARTING", "RUNNING", "RECOVERING", "SUCCEEDED", "FAILED", "CANCELLED")
TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED")


@dataclass
class JobRow:
    job_id: str
    backend: str
    instance_id: str | None
    state: str
    gpu: str | None
    run_name: str | None
    price_per_hour: float | None
    created_at: float
    updated_at: float
    info: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class RegistryError(RuntimeError):
    """The registry file cannot be used (not a database, unreadable); one line, no traceback."""


def _default_redact(value: Any) -> Any:
    from launch.credentials import redact

    return redact(value)


class Registry:
    def __init__(self, root: str | Path = "runs", redact: Callable[[Any], Any] | None = None):
        """``redact`` is applied to every reason and info value before it is stored (default: every secret
        value the launcher has seen, see ``launch.credentials.redact``), so the registry never holds one."""
        self.root = Path(root)
        self.path = self.root / "registry.sqlite"
        self._redact = redact or _default_redact
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with self._conn() as c:
                c.executescript(SCHEMA)
        except sqlite3.DatabaseError as e:  # a file of garbage, a truncated copy, a folder in its place
            raise RegistryError(
                f"{self.path} is not a job registry ({e}); move it away to start a new one"
            ) from None
        except OSError as e:
            raise RegistryError(f"{self.path}: cannot create the job registry: {e.strerror or e}") from None

    @contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        conn.row_factory = sqlite3.Row
        try:
            yield conn
        finally:
            conn.close()

    def claim(self, job_id: str, backend: str, *, gpu: str, run_name: str) -> tuple[JobRow, bool]:
        """Insert the job as SUBMITTING unless it exists. Returns (row, created). Atomic across processes."""
        now = time.time()
        with self._conn() as c:
            c.execute("BEGIN IMMEDIATE")
            row = c.execute("SELECT * FROM jobs WHERE job_id=?", (job_id,)).fetchone()
            if row is not None:
                c.execute("COMMIT")
                return _row(row), False
            c.execute(
                "INSERT INTO jobs (job_id, backend, state, gpu, run_name, created_at, updated_at) VALUES (?,?,?,?,?,?,?)",
                (job_id, backend, "SUBMITTING", gpu, run_name, now, now),
            )
            c.execute(
                "INSERT INTO events (job_id, ts, state, reason) VALUES (?,?,?,?)",
                (job_id, now, "SUBMITTING", ""),
            )
            c.execute("COMMIT")
        got = self.get(job_id)
        assert got is not None
        return got, True

    def update(self, job_id: str, *, state: str | None = None, reason: str = "", **fields: Any) -> None:
        now = time.time()
        reason = self._redact(reason)
        sets, vals = ["updated_at=?"], [now]
        if state is not None:
            sets.append("state=?")
            vals.append(state)
        for k in ("backend", "instance_id", "price_per_hour"):
            if k in fields:
                sets.append(f"{k}=?")
                vals.append(fields.pop(k))
        with self._conn() as c:
            c.execute("BEGIN IMMEDIATE")
            if fields:
                old = c.execute("SELECT info FROM jobs WHERE job_id=?", (job_id,)).fetchone()
                info = json.loads(old["info"]) if old else {}
                info.update(self._redact(fields))
                sets.append("info=?")
                vals.append(json.dumps(info))
            c.execute(f"UPDATE jobs SET {', '.join(sets)} WHERE job_id=?", (*vals, job_id))
            if state is not None:
                iid = c.execute("SELECT instance_id FROM jobs WHERE job_id=?", (job_id,)).fetchone()
                c.execute(
                    "INSERT INTO events (job_id, ts, state, reason, instance_id) VALUES (?,?,?,?,?)",
                    (job_id, now, state, reason, iid["instance_id"] if iid else None),
                )
            c.execute("COMMIT")

    def set_state_unless(self, job_id: str, state: str, reason: str, *, unless: tuple[str, ...]) -> bool:
        """Atomically move to ``state`` unless the job is in one of ``unless`` (e.g. a user's CANCELLED must
        not be overwritten by a controller that did not see it yet). Returns whether it moved."""
        now = time.time()
        reason = self._redact(reason)
        with self._conn() as c:
            c.execute("BEGIN IMMEDIATE")
            row = c.execute("SELECT state, instance_id FROM jobs WHERE job_id=?", (job_id,)).fetchone()
            if row is None or (row["state"] in unless and row["state"] != state):
                c.execute("COMMIT")
                return False
            c.execute("UPDATE jobs SET state=?, updated_at=? WHERE job_id=?", (state, now, job_id))
            c.execute(
                "INSERT INTO events (job_id, ts, state, reason, instance_id) VALUES (?,?,?,?,?)",
                (job_id, now, state, reason, row["instance_id"]),
            )
            c.execute("COMMIT")
        return True

    def get(self, job_id: str) -> JobRow | None:
        with self._conn() as c:
            row = c.execute("SELECT * FROM jobs WHERE job_id=?", (job_id,)).fetchone()
        return _row(row) if row else None

    def list(self) -> list[JobRow]:
        with self._conn() as c:
            rows = c.execute("SELECT * FROM jobs ORDER BY created_at").fetchall()
        return [_row(r) for r in rows]

    def events(self, job_id: str) -> list[dict[str, Any]]:
        with self._conn() as c:
            rows = c.execute(
                "SELECT ts, state, reason, instance_id FROM events WHERE job_id=? ORDER BY id", (job_id,)
            )
            return [dict(r) for r in rows.fetchall()]

    # -- launches (managed jobs: one row per instance created for the job; the basis of cost so far) -----
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
        """Record a new instance of the job and make it the job's current one. Returns the launch number."""
        now = time.time()
        with self._conn() as c:
            c.execute("BEGIN IMMEDIATE")
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
            c.execute("COMMIT")
        return int(n)

    def end_launch(self, job_id: str, instance_id: str, reason: str) -> None:
        """Close the launch of ``instance_id`` (idempotent: the first end time and reason stay)."""
        with self._conn() as c:
            c.execute(
                "UPDATE launches SET ended_at=?, end_reason=? WHERE job_id=? AND instance_id=? AND ended_at IS NULL",
                (time.time(), self._redact(reason), job_id, instance_id),
            )

    def launches(self, job_id: str) -> list[dict[str, Any]]:
        with self._conn() as c:
            rows = c.execute("SELECT * FROM launches WHERE job_id=? ORDER BY n", (job_id,)).fetchall()
        return [dict(r) for r in rows]

    def cost(self, job_id: str, now: float | None = None) -> float:
        """$/h × hours summed over the job's launches (an open launch counts up to ``now``)."""
        now = time.time() if now is None else now
        total = 0.0
        for r in self.launches(job_id):
            hours = max(0.0, ((r["ended_at"] or now) - r["started_at"]) / 3600.0)
            total += (r["price_per_hour"] or 0.0) * hours
        return total


def _row(r: sqlite3.Row) -> JobRow:
    d = dict(r)
    d["info"] = json.loads(d.get("info") or "{}")
    return JobRow(**d)
