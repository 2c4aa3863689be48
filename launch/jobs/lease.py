"""One controller per job: a lease of (pid, host) with a heartbeat, kept in the job's registry row.

Why: two controllers of one job each see the other's instance as "not mine" and launch again; that is how
double launches (and double bills) happen. On this host a live pid holds the lease; from another host only a
fresh heartbeat does (a pid there cannot be checked).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable

from launch.jobs.state import Registry


class LeaseHeld(RuntimeError):
    """Another live controller watches this job."""


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Lease:
    def __init__(
        self,
        reg: Registry,
        job_id: str,
        *,
        stale_s: float = 60.0,
        clock: Callable[[], float] = time.time,
        pid: int | None = None,
        host: str | None = None,
        alive: Callable[[int], bool] = pid_alive,
    ):
        self.reg = reg
        self.job_id = job_id
        self.stale_s = stale_s
        self.clock = clock
        self.pid = os.getpid() if pid is None else pid
        self.host = socket.gethostname() if host is None else host
        self.alive = alive

    def acquire(self) -> None:
        """Take the lease, or raise ``LeaseHeld`` naming the holder."""
        row = self.reg.get(self.job_id)
        if row is None:
            raise KeyError(f"no job {self.job_id!r} in {self.reg.path}")
        holder = (row.controller_pid, row.controller_host)
        pid, host = holder
        if pid is not None and holder != (self.pid, self.host):
            if host == self.host and self.alive(int(pid)):
                raise LeaseHeld(
                    f"job {self.job_id} is already watched by controller pid {pid} on {host}; "
                    "stop it first (or wait for it to exit)"
                )
            age = self.clock() - (row.heartbeat_at or 0.0)
            if host != self.host and age < self.stale_s:
                raise LeaseHeld(
                    f"job {self.job_id} is watched by controller pid {pid} on {host} (heartbeat {age:.0f}s ago)"
                )
        if not self.reg.swap_lease(self.job_id, holder, (self.pid, self.host)):
            raise LeaseHeld(f"job {self.job_id}: another controller took it at the same moment")

    def beat(self) -> None:
        self.reg.set(self.job_id, heartbeat_at=self.clock())

    def release(self) -> None:
        self.reg.swap_lease(self.job_id, (self.pid, self.host), (None, None))
