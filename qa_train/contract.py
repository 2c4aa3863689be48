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
    <target>/<run_name>/tokenized/<key>/   tokenized training data (committed by its _manifest.json); a
                                           relaunch downloads it instead of re-tokenizing (never a checkpoint)
    <target>/<run_name>/report.json        the run report (below), rewritten whole at every change
    <target>/<run_name>/metrics.json       live training metrics (``RunMetrics``), rewritten every ~15 s
    <target>/<run_name>/report/            report.html + PNG plots (``python -m qa_train report``)
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

SPEC_NAME = "spec.json"
REPORT_NAME = "report.json"
FINAL = "final"
MERGED = "merged"
EVAL = "eval"
CHECKPOINT_PREFIX = "checkpoint-"
TOKENIZED = "tokenized"  # <run>/tokenized/<cache key>/: qa_train.data.tokenize's cache, shared by relaunches
REPORT_VERSION = 1
METRICS_NAME = "metrics.json"
REPORT_DIR = "report"  # report.html + plots
TB = "tb"  # <run>/tb/: TensorBoard event files (training.report_to: tensorboard), local <output_dir>/tb/
PACKING_NAME = "packing.json"  # beside train_summary.json: sample-length histogram and fill per pack

# Env the launcher gives the container (short references only: clouds cap env values, vast at 256 characters).
ENV_SPEC = "QA_JOB_SPEC"  # the whole rendered spec as JSON (local backend only)
ENV_SPEC_URI = "QA_JOB_SPEC_URI"  # s3://…/<run_name>/spec.json (cloud backends)
ENV_BACKEND = "QA_BACKEND"  # local | vast | runpod: which cloud's self-stop to use
ENV_KEEP_INSTANCE = "QA_KEEP_INSTANCE"  # "1": do not stop the instance at the end (--keep_instance)
# What the clouds inject into every instance (scoped to that one instance).
VAST_INJECTED = ("CONTAINER_ID", "CONTAINER_API_KEY")
RUNPOD_INJECTED = ("RUNPOD_POD_ID", "RUNPOD_API_KEY")
# Which committed folder proves a stage done (a relaunch skips it): train → final/, merge → merged/, eval → eval/.
STAGE_OUTPUTS = {"train": FINAL, "merge": MERGED, "eval": EVAL}


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
    def metrics(self) -> str:
        return self.child(METRICS_NAME)

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

    def tokenized(self, key: str) -> str:
        return self.child(f"{TOKENIZED}/{key}")


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
        """Atomic for readers (temp file in the same folder, fsync, rename): never a half-written report."""
        atomic_write_text(Path(path), self.to_json())


class ReportError(ValueError):
    """A report that cannot be parsed (names where it was read)."""


# -- live metrics: written by the trainer (qa_train/metrics.py), read by ``status`` / ``watch`` / ``report`` --

METRICS_VERSION = 1
POINT_KEYS = ("step", "t", "loss", "lr", "tokens_per_second", "eval_loss")


@dataclass
class RunMetrics:
    """Where training is, rewritten whole by rank 0 every few seconds (locally) / ~15 s (object storage).

    ``history``: points ``{step, t, loss, lr, tokens_per_second, eval_loss}`` (any may be None but step and t),
    bounded and thinned by the writer; ``segments``: one ``{start_step, started_at}`` per training start, so a
    plot can mark where a preempted run resumed. ``tokens_per_second`` counts non-padding tokens of all ranks
    over the last logging window. Times are Unix seconds.
    """

    run_name: str
    step: int = 0
    max_steps: int | None = None
    epoch: float | None = None
    train_loss: float | None = None
    eval_loss: float | None = None
    learning_rate: float | None = None
    tokens_per_second: float | None = None
    gpu_memory_gb: float | None = None  # peak allocated on rank 0's device
    gpu_memory_total_gb: float | None = None
    started_at: float = field(default_factory=time.time)  # this training start
    updated_at: float = field(default_factory=time.time)
    finished: bool = False  # training ended (the final save may still be running)
    history: list[dict[str, Any]] = field(default_factory=list)
    segments: list[dict[str, Any]] = field(default_factory=list)
    version: int = METRICS_VERSION

    def to_json(self) -> str:
        return json.dumps(_finite(asdict(self)), separators=(",", ":"), allow_nan=False) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes, source: str = METRICS_NAME) -> RunMetrics:
        """Parse metrics; unknown keys dropped (a newer container), malformed → ``ReportError`` naming source."""
        try:
            doc = json.loads(text)
            if not isinstance(doc, dict) or "run_name" not in doc:
                raise ValueError("not a JSON object with run_name")
            known = {k: v for k, v in doc.items() if k in cls.__dataclass_fields__}
            known["history"] = [p for p in known.get("history") or [] if isinstance(p, dict) and "step" in p]
            known["segments"] = [s for s in known.get("segments") or [] if isinstance(s, dict)]
            return cls(**known)
        except (ValueError, TypeError) as e:
            raise ReportError(f"{source}: not a metrics file: {e}") from None

    def eta_s(self, now: float | None = None, window: int = 20) -> float | None:
        """Seconds left at the pace of the last ``window`` points of the current segment (None: unknown)."""
        if not self.max_steps or self.step >= self.max_steps:
            return 0.0 if self.max_steps and self.step >= self.max_steps else None
        start = self.segments[-1].get("start_step", 0) if self.segments else 0
        pts = [p for p in self.history if p.get("step", 0) >= start and p.get("t")][-window:]
        if len(pts) >= 2 and pts[-1]["step"] > pts[0]["step"] and pts[-1]["t"] > pts[0]["t"]:
            rate = (pts[-1]["step"] - pts[0]["step"]) / (pts[-1]["t"] - pts[0]["t"])
        elif self.step > start and self.updated_at > self.started_at:
            rate = (self.step - start) / (self.updated_at - self.started_at)
        else:
            return None
        return (self.max_steps - self.step) / rate


def _finite(value: Any) -> Any:
    """NaN / inf → None (strict JSON: a diverged loss must not make the file unreadable elsewhere)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` → (bucket, key); ``ValueError`` naming the URI when either part is missing."""
    if not uri.startswith("s3://"):
        raise ValueError(f"{uri!r} is not an s3://bucket/key URI")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket or not key.strip("/"):
        raise ValueError(f"{uri!r} is not an s3://bucket/key URI (bucket and key both needed)")
    return bucket, key


# -- inputs: the URI forms a spec's data/model paths may take (the launcher may check them before renting) --

HF_SCHEME = "hf://"
DEFAULT_HF_ENDPOINT = "https://huggingface.co"


def hub_endpoint(env: dict[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    return (env.get("HF_ENDPOINT") or DEFAULT_HF_ENDPOINT).rstrip("/")


def input_kind(path: str) -> str:
    """``s3`` | ``http`` | ``hf`` | ``local`` (``ValueError`` for another ``scheme://``)."""
    if path.startswith("s3://"):
        return "s3"
    if path.startswith(("https://", "http://")):
        return "http"
    if path.startswith(HF_SCHEME):
        return "hf"
    if "://" in path:
        raise ValueError(f"{path!r}: unsupported URI scheme (use s3://, https://, hf://datasets/… or a path)")
    return "local"


def hub_file_url(uri: str, env: dict[str, str] | None = None) -> str:
    """``hf://datasets/<org>/<name>[@<revision>]/<path>`` → ``<hub>/datasets/<org>/<name>/resolve/<rev>/<path>``.

    The hub is ``HF_ENDPOINT`` (else huggingface.co); revision defaults to ``main``."""
    rest = uri[len(HF_SCHEME) :] if uri.startswith(HF_SCHEME) else ""
    parts = rest.split("/")
    if len(parts) < 4 or parts[0] != "datasets" or not all(parts[1:]):
        raise ValueError(f"{uri!r}: expected hf://datasets/<org>/<name>/<path to a file>")
    org, name, path = parts[1], parts[2], "/".join(parts[3:])
    name, _, revision = name.partition("@")
    if not name or any(p in (".", "..") for p in parts):
        raise ValueError(f"{uri!r}: expected hf://datasets/<org>/<name>/<path to a file>")
    return f"{hub_endpoint(env)}/datasets/{org}/{name}/resolve/{revision or 'main'}/{path}"


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
