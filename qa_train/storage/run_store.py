"""One run's folder in object storage as both sides use it: the spec, the report, the metrics, what is
committed (``RunStore``). The launcher's controller polls through it, so its default policy is short."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from qa_train.contract.layout import METRICS_NAME, REPORT_NAME, RunLayout, checkpoint_step
from qa_train.contract.report import RunReport
from qa_train.contract.run_metrics import RunMetrics

from .client import RetryPolicy, make_client
from .objects import get_bytes, put_bytes
from .uris import S3Location


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
    """One run's folder in S3-compatible storage.

    ``credentials`` (AWS_* names → values) are used when given, else the standard AWS chain; the endpoint comes
    from ``endpoint_url`` or ``AWS_ENDPOINT_URL``. ``policy`` defaults to ``RetryPolicy.short()`` with
    ``attempts``: a controller polling a report must not hang on a storage outage.
    """

    def __init__(
        self,
        layout: RunLayout,
        endpoint_url: str | None = None,
        credentials: dict[str, str] | None = None,
        *,
        attempts: int = 3,
        policy: RetryPolicy | None = None,
    ):
        self.layout = layout
        self.endpoint_url = endpoint_url
        self.credentials = credentials
        self.policy = (policy or RetryPolicy.short()).with_attempts(attempts)
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = make_client(self.endpoint_url, policy=self.policy, credentials=self.credentials)
        return self._client

    def location(self, name: str = "") -> S3Location:
        return S3Location.parse(self.layout.child(name) if name else self.layout.root)

    def put_text(self, name: str, text: str, content_type: str = "application/json") -> str:
        """One PUT (atomic for readers: they see the old object or the new one). Returns the object's URI."""
        return self.put_bytes(name, text.encode("utf-8"), content_type)

    def put_bytes(self, name: str, body: bytes, content_type: str) -> str:
        loc = self.location(name)
        put_bytes(self.client, loc.bucket, loc.prefix, body, content_type)
        return self.layout.child(name)

    def get_text(self, name: str) -> str | None:
        """The object's text, or None when it does not exist."""
        loc = self.location(name)
        body = get_bytes(self.client, loc.bucket, loc.prefix)
        return None if body is None else body.decode("utf-8")

    def read_report(self) -> RunReport | None:
        text = self.get_text(REPORT_NAME)
        return None if text is None else RunReport.from_json(text, self.layout.report)

    def read_metrics(self) -> RunMetrics | None:
        text = self.get_text(METRICS_NAME)
        return None if text is None else RunMetrics.from_json(text, self.layout.metrics)

    def write_report(self, report: RunReport) -> None:
        report.updated_at = time.time()
        self.put_text(REPORT_NAME, report.to_json())

    def folders(self) -> list[FolderState]:
        """Checkpoints (by step), then final / merged / eval / others, with their committed flag."""
        from qa_train.sync.remote import list_run  # the commit rule (manifests) is sync's

        return [
            FolderState(f.name, f.uri, f.committed, f.num_files)
            for f in list_run(self.client, self.location())
        ]

    def committed_step(self) -> int | None:
        steps = [f.step for f in self.folders() if f.step is not None and f.committed]
        return max(steps) if steps else None

    def committed(self) -> set[str]:
        """Names of the committed top-level folders (``final``, ``merged``, ``checkpoint-4``, …)."""
        return {f.name for f in self.folders() if f.committed}

    @classmethod
    def for_object(
        cls, uri: str, endpoint_url: str | None = None, credentials: dict[str, str] | None = None
    ) -> tuple[RunStore, str]:
        """A store rooted at the object's folder and the object's name: ``s3://b/p/r/spec.json`` → (…/r, spec.json).

        Raises ``S3UriError`` (a ``ValueError``) for anything that is not ``s3://bucket/key``."""
        loc = S3Location.parse(uri, need_key=True)
        parent, _, name = loc.prefix.rpartition("/")
        root = S3Location(loc.bucket, parent).uri
        return cls(RunLayout(root), endpoint_url, credentials), name
