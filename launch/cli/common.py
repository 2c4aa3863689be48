"""What every command group of the CLI shares: the error it prints, the registry and a recorded job's plan."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from launch.backends.base import CloudError, Compute
from launch.jobs.plan import JobPlan
from launch.jobs.state import JobRow, Registry
from launch.jobs.submission import SubmitError, job_plan

DEFAULT_JOB = "jobs/mistral-qa-full.yaml"


def prog() -> str:
    """How the user started the launcher, for hints: the console script or the script in a checkout."""
    return "qa-launch" if Path(sys.argv[0]).name == "qa-launch" else "python launch/submit.py"


class CliError(Exception):
    """Printed as ``error: …`` with exit status 1 (no traceback)."""


class Commands:
    """State every command group reads: where the registry lives, and the exit status of the last command."""

    def __init__(self, runs_dir: str = "runs"):
        self._runs_dir = runs_dir
        self._exit_code = 0  # set by commands whose outcome is not an error message (e.g. ^C of a controller)

    def _registry(self) -> Registry:
        return Registry(self._runs_dir)

    def _row(self, reg: Registry, job_id: str | None) -> JobRow:
        row = reg.get(str(job_id))
        if row is None:
            raise CliError(f"no job {job_id!r} in {reg.path}")
        return row

    def _job_plan(self, reg: Registry, row: JobRow, *, computes: bool = True) -> JobPlan:
        try:
            return job_plan(reg, row, computes=computes)
        except SubmitError as e:
            raise CliError(str(e)) from None


def compute(name: str) -> Compute:
    """One cloud's compute for a recorded instance (status, logs, cancel)."""
    from launch.backends import get_compute

    try:
        return get_compute(name)
    except CloudError as e:
        raise CliError(str(e)) from None


def dumps(doc: Any) -> str:
    return json.dumps(doc, indent=2, default=str)
