"""The contract between the container and the launcher: where a run lives in object storage and the run report.

Why one module: the container writes these paths and the report, the launcher (controller, ``status``) reads
them; a folder name or a report field defined twice drifts. Standard library only (the launcher never imports
torch, boto3 is imported lazily by whoever talks to storage).

Layout of one run (``<target>`` is the job's ``sync.target``, e.g. ``s3://bucket/prefix``)::

    <target>/<run_name>/spec.json          rendered spec, uploaded by the launcher before renting
    <target>/<run_name>/checkpoint-<N>/    Trainer checkpoints (committed by their _manifest.json)
    <target>/<run_name>/final/             final model or adapter
    <target>/<run_name>/merged/            merged model (LoRA / QLoRA)
    <target>/<run_name>/eval/              predictions + summary
    <target>/<run_name>/report.json        the run report (below), rewritten whole at every change
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

SPEC_NAME = "spec.json"
REPORT_NAME = "report.json"
FINAL = "final"
MERGED = "merged"
EVAL = "eval"
CHECKPOINT_PREFIX = "checkpoint-"
REPORT_VERSION = 1

# Env the launcher gives the container (short references only: clouds cap env values, vast at 256 characters).
ENV_SPEC = "QA_JOB_SPEC"  # the whole rendered spec as JSON (local backend only)
ENV_SPEC_URI = "QA_JOB_SPEC_URI"  # s3://…/<run_name>/spec.json (cloud backends)
ENV_BACKEND = "QA_BACKEND"  # local | vast | runpod: which cloud's self-stop to use
ENV_KEEP_INSTANCE = "QA_KEEP_INSTANCE"  # "1": do not stop the instance at the end (--keep_instance)
# What the clouds inject into every instance (scoped to that one instance).
VAST_INJECTED = ("CONTAINER_ID", "CONTAINER_API_KEY")
RUNPOD_INJECTED = ("RUNPOD_POD_ID", "RUNPOD_API_KEY")


def run_uri(target: str, run_name: str) -> str:
    """``s3://bucket/prefix/<run_name>`` (no trailing slash)."""
    return f"{target.rstrip('/')}/{run_name}"


@dataclass(frozen=True)
class RunLayout:
    """The URIs of one run's parts; build with ``RunLayout.of(target, run_name)``."""

    root: str

    @classmethod
    def of(cls, target: str, run_name: str) -> RunLayout:
        return cls(run_uri(target, run_name))

    def child(self, name: str) -> str:
        return f"{self.root}/{name}"

    @property
    def spec(self) -> str:
        return self.child(SPEC_NAME)

    @property
    def report(self) -> str:
        return self.child(REPORT_NAME)

    @property
    def final(self) -> str:
        return self.child(FINAL)

    @property
    def merged(self) -> str:
        return self.child(MERGED)

    @property
    def eval(self) -> str:
        return self.child(EVAL)

    def checkpoint(self, step: int) -> str:
        return self.child(f"{CHECKPOINT_PREFIX}{step}")


def checkpoint_step(folder_name: str) -> int | None:
    """``checkpoint-120`` → 120; anything else → None."""
    if folder_name.startswith(CHECKPOINT_PREFIX) and folder_name[len(CHECKPOINT_PREFIX) :].isdigit():
        return int(folder_name[len(CHECKPOINT_PREFIX) :])
    return None


class RunState(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass
class StageResult:
    name: str
    exit_code: int | None = None  # None while the stage runs
    seconds: float | None = None
    started_at: float | None = None


@dataclass
class RunReport:
    """What a run says about itself. The controller decides from this and the instance state, never from logs.

    ``launch`` counts the container starts that wrote this report (a resumed run on a new machine adds one).
    """

    run_name: str
    state: RunState = RunState.RUNNING
    stages: list[StageResult] = field(default_factory=list)
    last_committed_step: int | None = None
    instance_id: str | None = None
    backend: str | None = None
    error: str | None = None
    started_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    launch: int = 1
    version: int = REPORT_VERSION

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
            stages = [StageResult(**s) for s in doc.get("stages") or []]
            known = {k: v for k, v in doc.items() if k in cls.__dataclass_fields__ and k != "stages"}
            known["state"] = RunState(known.get("state", "running"))
            return cls(stages=stages, **known)
        except (ValueError, TypeError) as e:
            raise ReportError(f"{source}: not a run report: {e}") from None


class ReportError(ValueError):
    """A report that cannot be parsed (names where it was read)."""


def report_dict(report: RunReport) -> dict[str, Any]:
    """The report as plain JSON-able data (for ``status --json``)."""
    return json.loads(report.to_json())
