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


@dataclass(frozen=True)
class FolderState:
    """One top-level folder of a run in object storage (``committed``: its manifest and every file present)."""

    name: str
    uri: str
    committed: bool
    num_files: int

    @property
    def step(self) -> int | None:
        return checkpoint_step(self.name)


class RunStore:
    """One run's folder in S3-compatible storage, as both sides use it: the spec, the report, what is committed.

    ``credentials`` (AWS_* names → values) are used when given, else the standard AWS chain; the endpoint comes
    from ``endpoint_url`` or ``AWS_ENDPOINT_URL``. Short timeouts and few attempts: a controller polling a report
    must not hang on a storage outage.
    """

    def __init__(
        self,
        layout: RunLayout,
        endpoint_url: str | None = None,
        credentials: dict[str, str] | None = None,
        *,
        attempts: int = 3,
    ):
        self.layout = layout
        self.endpoint_url = endpoint_url
        self.credentials = credentials
        self.attempts = attempts
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config

            from qa_train.sync.storage import resolve_endpoint

            creds = self.credentials or {}
            session = boto3.session.Session(
                aws_access_key_id=creds.get("AWS_ACCESS_KEY_ID") or None,
                aws_secret_access_key=creds.get("AWS_SECRET_ACCESS_KEY") or None,
                aws_session_token=creds.get("AWS_SESSION_TOKEN") or None,
            )
            config = Config(
                retries={"mode": "standard", "max_attempts": self.attempts},
                connect_timeout=5,
                read_timeout=20,
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                s3={"addressing_style": "path"},
            )
            self._client = session.client(
                "s3",
                endpoint_url=resolve_endpoint(self.endpoint_url),
                region_name=session.region_name or "us-east-1",
                config=config,
            )
        return self._client

    def _where(self, name: str) -> tuple[str, str]:
        from qa_train.sync.storage import S3Location

        loc = S3Location.parse(self.layout.child(name))
        return loc.bucket, loc.prefix

    def put_text(self, name: str, text: str, content_type: str = "application/json") -> str:
        """One PUT (atomic for readers: they see the old object or the new one). Returns the object's URI."""
        bucket, key = self._where(name)
        self.client.put_object(Bucket=bucket, Key=key, Body=text.encode("utf-8"), ContentType=content_type)
        return self.layout.child(name)

    def get_text(self, name: str) -> str | None:
        """The object's text, or None when it does not exist."""
        from botocore.exceptions import ClientError

        bucket, key = self._where(name)
        try:
            return self.client.get_object(Bucket=bucket, Key=key)["Body"].read().decode("utf-8")
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                return None
            raise

    def read_report(self) -> RunReport | None:
        text = self.get_text(REPORT_NAME)
        return None if text is None else RunReport.from_json(text, self.layout.report)

    def write_report(self, report: RunReport) -> None:
        report.updated_at = time.time()
        self.put_text(REPORT_NAME, report.to_json())

    def folders(self) -> list[FolderState]:
        """Checkpoints (by step), then final / merged / eval / others, with their committed flag."""
        from qa_train.sync.remote import list_run
        from qa_train.sync.storage import S3Location

        return [
            FolderState(f.name, f.uri, f.committed, f.num_files)
            for f in list_run(self.client, S3Location.parse(self.layout.root))
        ]

    def committed_step(self) -> int | None:
        steps = [f.step for f in self.folders() if f.step is not None and f.committed]
        return max(steps) if steps else None
