"""The run report ``report.json``: what a run says about itself. The controller decides from it and the
instance state, never from log wording."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from qa_train.contract.layout import REPORT_NAME, REPORT_VERSION


class RunState(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass
class StageResult:
    """One stage of this launch. ``skipped``: its output was already committed by an earlier launch."""

    name: str
    exit_code: int | None = None  # None while the stage runs
    seconds: float | None = None
    started_at: float | None = None
    skipped: bool = False


@dataclass
class RunReport:
    """What a run says about itself. The controller decides from this and the instance state, never from logs.

    ``launch`` counts the container starts that wrote this report (a resumed run on a new machine adds one).
    ``uploads_pending``: folders (checkpoints) still only on the instance's disk; while ``uploads_until`` (epoch
    seconds) has not passed the container keeps retrying them, and the controller must not destroy it.
    """

    run_name: str
    state: RunState = RunState.RUNNING
    stages: list[StageResult] = field(default_factory=list)
    last_committed_step: int | None = None
    # what train bound the run to: flag → {path, sha256, bytes} (qa_train.fingerprint, output_dir/inputs.json)
    inputs: dict[str, Any] | None = None
    instance_id: str | None = None
    backend: str | None = None
    error: str | None = None
    started_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    launch: int = 1
    uploads_pending: list[str] = field(default_factory=list)
    uploads_until: float | None = None
    # a multi-node run (written by node 0): nnodes, world_size, nproc_per_node, platform, each node's train
    # exit code as node 0 saw it (``nodes``) and ``failed_nodes``; None on one machine
    group: dict[str, Any] | None = None
    version: int = REPORT_VERSION

    def uploads_held(self, now: float) -> bool:
        """Uploads are pending and the container's retry bound has not passed: keep its instance."""
        return bool(self.uploads_pending) and self.uploads_until is not None and now < self.uploads_until

    @property
    def final(self) -> bool:
        return self.state in (RunState.SUCCEEDED, RunState.FAILED)

    def failed_stage(self) -> StageResult | None:
        return next((s for s in self.stages if s.exit_code not in (None, 0)), None)

    def to_json(self) -> str:
        doc = asdict(self)
        doc["state"] = str(self.state)
        return json.dumps(doc, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes, source: str = REPORT_NAME) -> RunReport:
        """Parse a report; a malformed one raises ``ReportError`` naming the source (never a KeyError)."""
        try:
            doc = json.loads(text)
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
            fields = StageResult.__dataclass_fields__
            # unknown keys are dropped, so a report written by a newer container still parses here
            stages = [
                StageResult(**{k: v for k, v in s.items() if k in fields}) for s in doc.get("stages") or []
            ]
            known = {k: v for k, v in doc.items() if k in cls.__dataclass_fields__ and k != "stages"}
            known["state"] = RunState(known.get("state", "running"))
            return cls(stages=stages, **known)
        except (ValueError, TypeError) as e:
            raise ReportError(f"{source}: not a run report: {e}") from None

    def write_local(self, path: str | Path) -> None:
        """Atomic for readers (temp file in the same folder, fsync, rename): never a half-written report.
        Standard library only: the contract imports nothing else of the project."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{time.monotonic_ns()}")
        try:
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(self.to_json())
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


class ReportError(ValueError):
    """A report that cannot be parsed (names where it was read)."""


def report_dict(report: RunReport) -> dict[str, Any]:
    """The report as plain JSON-able data (for ``status --json``)."""
    return json.loads(report.to_json())
