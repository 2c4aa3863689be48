"""One run's folder in S3-compatible storage (``RunStore``) and ``upload_dir`` for ``submit.py upload-data``;
boto3 is imported lazily."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qa_train.contract.layout import METRICS_NAME, REPORT_NAME, RunLayout, checkpoint_step
from qa_train.contract.report import RunReport
from qa_train.contract.run_metrics import RunMetrics
from qa_train.contract.uris import split_s3_uri


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
            pair = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
            if bool(creds.get(pair[0])) != bool(creds.get(pair[1])):  # botocore would fail later, obscurely
                given, missing = pair if creds.get(pair[0]) else pair[::-1]
                raise ValueError(f"{given} is set but {missing} is not: S3 needs both")
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
        return self.put_bytes(name, text.encode("utf-8"), content_type)

    def put_bytes(self, name: str, body: bytes, content_type: str) -> str:
        bucket, key = self._where(name)
        self.client.put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type)
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

    def read_metrics(self) -> RunMetrics | None:
        text = self.get_text(METRICS_NAME)
        return None if text is None else RunMetrics.from_json(text, self.layout.metrics)

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

    def committed(self) -> set[str]:
        """Names of the committed top-level folders (``final``, ``merged``, ``checkpoint-4``, …)."""
        return {f.name for f in self.folders() if f.committed}

    @classmethod
    def for_object(
        cls, uri: str, endpoint_url: str | None = None, credentials: dict[str, str] | None = None
    ) -> tuple[RunStore, str]:
        """A store rooted at the object's folder and the object's name: ``s3://b/p/r/spec.json`` → (…/r, spec.json).

        Raises ``ValueError`` for anything that is not ``s3://bucket/key``."""
        bucket, key = split_s3_uri(uri)
        parent, _, name = key.rpartition("/")
        root = f"s3://{bucket}/{parent}" if parent else f"s3://{bucket}"
        return cls(RunLayout(root), endpoint_url, credentials), name


# -- upload-data: the user's local files into object storage (launcher side; boto3 imported lazily) --


@dataclass(frozen=True)
class UploadedFile:
    uri: str
    size: int
    skipped: bool  # already there, same size and content


def _md5_sha256(path: Path) -> tuple[str, str]:
    md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            md5.update(chunk)
            sha.update(chunk)
    return md5.hexdigest(), sha.hexdigest()


def upload_dir(
    local_dir: str | Path,
    uri: str,
    credentials: dict[str, str] | None = None,
    endpoint_url: str | None = None,
    *,
    progress: bool = True,
) -> list[UploadedFile]:
    """Upload every file under ``local_dir`` to ``uri/<relative path>``; a file already there is skipped.

    "Already there" = same size and same content: the ETag equals the local MD5 (single-part uploads) or the
    object's ``sha256`` metadata (which this function sets on every upload, multipart included). A single
    file may be given instead of a folder: it lands at ``uri/<name>``. Raises ``ValueError`` for a bad URI or
    an empty folder, ``OSError`` for an unreadable local path, botocore errors for storage problems.
    """
    src = Path(local_dir)
    if not src.exists():
        raise FileNotFoundError(f"{src}: no such file or folder")
    files = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file())
    if not files:
        raise ValueError(f"{src}: no files to upload")
    bucket, _ = split_s3_uri(uri.rstrip("/") + "/x")
    prefix = uri.rstrip("/")[len(f"s3://{bucket}") :].strip("/")
    store = RunStore(RunLayout(f"s3://{bucket}"), endpoint_url, credentials)
    client = store.client
    from botocore.exceptions import ClientError

    bar = None
    if progress:
        try:
            from tqdm import tqdm

            total = sum(p.stat().st_size for p in files)
            bar = tqdm(total=total, unit="B", unit_scale=True, desc=f"upload {src.name}")
        except ImportError:
            bar = None
    out: list[UploadedFile] = []
    try:
        for path in files:
            rel = path.name if src.is_file() else path.relative_to(src).as_posix()
            key = f"{prefix}/{rel}" if prefix else rel
            size = path.stat().st_size
            md5, sha = _md5_sha256(path)
            try:
                head = client.head_object(Bucket=bucket, Key=key)
            except ClientError as e:
                if e.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey", "NotFound"):
                    raise
                head = None
            same = (
                head is not None
                and head.get("ContentLength") == size
                and (head.get("ETag", "").strip('"') == md5 or head.get("Metadata", {}).get("sha256") == sha)
            )
            if not same:
                client.upload_file(
                    str(path), bucket, key, ExtraArgs={"Metadata": {"sha256": sha}},
                    Callback=bar.update if bar is not None else None,
                )  # fmt: skip
            elif bar is not None:
                bar.update(size)
            out.append(UploadedFile(f"s3://{bucket}/{key}", size, same))
    finally:
        if bar is not None:
            bar.close()
    return out
