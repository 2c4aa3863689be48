"""The one S3 client factory and its retry/timeout policy.

Credentials come from the standard AWS chain (env, shared files, instance roles) or, on the launcher, from the
secrets it read (``credentials``): never from a flag, a spec file or a log line. The endpoint comes from an
explicit URL or ``AWS_ENDPOINT_URL``.

Two kinds of callers want different things from one policy: a controller polling a report must not hang on an
outage (few attempts, short timeouts, no outer retry: the next poll asks again), while an upload must outlast
one (``RetryPolicy.uploads``: the operation is retried for ``QA_S3_RETRY_S`` seconds, default 600).
"""

from __future__ import annotations

import functools
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from qa_train.secret_check import SecretValueError, check_secret_value

from .errors import CREDENTIAL_VARS, CredentialValueError, StorageSettingError, is_transient, scrub

logger = logging.getLogger("qa_train.storage")
ENV_RETRY_S = "QA_S3_RETRY_S"  # how long an upload (or a transfer) is retried through an outage
DEFAULT_RETRY_S = 600.0
# Parts of 16 MiB, 10 in flight: a 1 GB checkpoint is ~64 parts, enough to fill the pipe without ballooning memory.
DEFAULT_CHUNK_BYTES = 16 * 1024 * 1024
DEFAULT_CONCURRENCY = 10
T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How hard storage is tried. ``attempts`` and the timeouts are botocore's, per request; ``total_s`` is how
    long ``retrying`` keeps re-running a whole operation (a folder upload, a download) while the store is
    unreachable or answers 5xx (0: the request's own attempts only)."""

    attempts: int = 3
    connect_timeout: float = 5.0
    read_timeout: float = 20.0
    total_s: float = 0.0
    mode: str = "standard"
    backoff_max_s: float = 30.0

    @classmethod
    def short(cls) -> RetryPolicy:
        """A controller or ``status`` reading a report: answer or fail within seconds; the next poll retries."""
        return cls()

    @classmethod
    def uploads(cls, env: dict[str, str] | os._Environ[str] | None = None) -> RetryPolicy:
        """Checkpoints, final models, inputs: outlast an outage of up to ``QA_S3_RETRY_S`` seconds."""
        return cls(attempts=6, connect_timeout=10.0, read_timeout=60.0, total_s=retry_seconds(env),
                   mode="adaptive")  # fmt: skip

    def with_attempts(self, attempts: int | None) -> RetryPolicy:
        return self if attempts is None else replace(self, attempts=max(1, int(attempts)))


def retry_seconds(env: dict[str, str] | os._Environ[str] | None = None) -> float:
    """``QA_S3_RETRY_S`` (seconds, ≥ 0), else 600; a value that is not a number is named, not ignored
    (``StorageSettingError``: a ``StorageError`` for ``train``, a ``ValueError`` for everyone else)."""
    env = os.environ if env is None else env
    raw = (env.get(ENV_RETRY_S) or "").strip()
    if not raw:
        return DEFAULT_RETRY_S
    try:
        value = float(raw)
    except ValueError:
        raise StorageSettingError(f"{ENV_RETRY_S}={raw!r}: expected a number of seconds") from None
    if not 0 <= value < float("inf"):
        raise StorageSettingError(f"{ENV_RETRY_S}={raw!r}: expected a number of seconds >= 0")
    return value


def resolve_endpoint(endpoint_url: str | None) -> str | None:
    return endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def check_credential_env(env: dict[str, str] | None = None) -> None:
    """Refuse a credential with a control character now: botocore would put it in a header and echo the
    header, value included, in its error."""
    env = dict(os.environ) if env is None else env
    for name in CREDENTIAL_VARS:
        value = env.get(name)
        if value:
            try:
                check_secret_value(name, value, f"the environment variable {name}")
            except SecretValueError as e:
                raise CredentialValueError(str(e)) from None


@functools.cache
def _data_loader() -> Any:
    """One botocore data loader for the process: it caches the parsed service models (S3's and the endpoint
    tables, megabytes of JSON), which a fresh session would parse again for every client (~0.1 s each)."""
    from botocore.loaders import create_loader

    return create_loader()


def _botocore_session() -> Any:
    """A fresh botocore session (sessions hold credentials; they are not shared) on the shared loader."""
    import botocore.session

    session = botocore.session.get_session()
    session.register_component("data_loader", _data_loader())
    return session


def make_client(
    endpoint_url: str | None = None,
    max_attempts: int | None = None,
    *,
    policy: RetryPolicy | None = None,
    credentials: dict[str, str] | None = None,
    max_pool: int = 32,
) -> Any:
    """A boto3 S3 client: ``policy`` (default ``RetryPolicy.uploads()``; ``max_attempts`` overrides its
    attempts), path-style addressing and checksums only where required (S3-compatible stores).

    ``credentials`` (AWS_* names → values) are used when given, else the standard AWS chain."""
    policy = (policy or RetryPolicy.uploads()).with_attempts(max_attempts)
    creds = credentials or {}
    check_credential_env(creds if credentials else None)
    pair = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    if bool(creds.get(pair[0])) != bool(creds.get(pair[1])):  # botocore would fail later, obscurely
        given, missing = pair if creds.get(pair[0]) else pair[::-1]
        raise ValueError(f"{given} is set but {missing} is not: S3 needs both")
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"mode": policy.mode, "max_attempts": policy.attempts},
        connect_timeout=policy.connect_timeout,
        read_timeout=policy.read_timeout,
        max_pool_connections=max_pool,
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        s3={"addressing_style": "path"},
    )
    session = boto3.session.Session(
        aws_access_key_id=creds.get("AWS_ACCESS_KEY_ID") or None,
        aws_secret_access_key=creds.get("AWS_SECRET_ACCESS_KEY") or None,
        aws_session_token=creds.get("AWS_SESSION_TOKEN") or None,
        botocore_session=_botocore_session(),
    )
    paths = _data_loader().search_paths
    paths[:] = list(dict.fromkeys(paths))  # boto3 appends its data folder to the (shared) loader each time
    region = session.region_name or "us-east-1"
    return session.client(
        "s3", endpoint_url=resolve_endpoint(endpoint_url), region_name=region, config=config
    )


def retrying(
    operation: Callable[[], T],
    policy: RetryPolicy,
    what: str,
    *,
    sleep: Callable[[float], None] = time.sleep,
    on_retry: Callable[[BaseException, float], None] | None = None,
) -> T:
    """Run ``operation``; while it fails with a transient storage error and ``policy.total_s`` is not spent,
    wait (exponential backoff with jitter, capped) and run it again. The last error is raised as it was.

    ``what`` names the operation in the one warning per outage (and the line saying it recovered)."""
    start = time.monotonic()
    attempt, warned = 0, False
    while True:
        try:
            result = operation()
        except Exception as exc:
            left = policy.total_s - (time.monotonic() - start)
            if not is_transient(exc) or left <= 0:
                raise
            delay = min(policy.backoff_max_s, 2.0**attempt, left) * random.uniform(0.5, 1.0)
            attempt += 1
            if not warned:
                warned = True
                logger.warning(
                    "%s: storage unavailable (%s: %s); retrying for up to %.0fs (%s)",
                    what, type(exc).__name__, scrub(str(exc))[:300], left, ENV_RETRY_S,
                )  # fmt: skip
            if on_retry is not None:
                on_retry(exc, left)
            sleep(max(delay, 0.05))
            continue
        if warned:
            logger.info("%s: storage answers again (after %.0fs)", what, time.monotonic() - start)
        return result


def transfer_config(
    concurrency: int = DEFAULT_CONCURRENCY, chunk_bytes: int = DEFAULT_CHUNK_BYTES, max_mbps: float = 0
) -> Any:
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(
        multipart_threshold=chunk_bytes,
        multipart_chunksize=chunk_bytes,
        max_concurrency=concurrency,
        max_bandwidth=int(max_mbps * 1e6) if max_mbps else None,
        use_threads=True,
    )
