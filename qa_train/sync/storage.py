"""S3-compatible object storage over boto3: locations, a tuned client, and clear errors.

Credentials come only from the standard AWS chain (env, shared files, instance roles) so that they never
appear in a flag, a spec file or a log line. The endpoint comes from an explicit URL or ``AWS_ENDPOINT_URL``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from qa_train.secret_check import SecretValueError, check_secret_value

SCHEME = "s3://"
# The AWS variables whose values are secret (checked before a client is made, never echoed in an error).
CREDENTIAL_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
DEFAULT_MAX_ATTEMPTS = 6
# Parts of 16 MiB, 10 in flight: a 1 GB checkpoint is ~64 parts, enough to fill the pipe without ballooning memory.
DEFAULT_CHUNK_BYTES = 16 * 1024 * 1024
DEFAULT_CONCURRENCY = 10


class SyncError(RuntimeError):
    """Any sync failure that the user has to act on; the message says what and where."""


class StorageAccessError(SyncError):
    """Credentials, bucket or endpoint problem found before any work started."""


class CredentialValueError(StorageAccessError):
    """An AWS credential variable whose value cannot be sent (a newline, CRLF, control character): bad input."""


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


def scrub(text: str) -> str:
    """``text`` without the values of the AWS credential variables (a library's error may quote them)."""
    for name in CREDENTIAL_VARS:
        value = os.environ.get(name, "")
        for form in {value, value.strip(), repr(value)[1:-1]}:
            if len(form) >= 8:
                text = text.replace(form, "***")
    return text


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str = ""  # no leading/trailing slash

    @classmethod
    def parse(cls, uri: str) -> S3Location:
        if not uri.startswith(SCHEME):
            raise SyncError(f"expected an s3://bucket/prefix URI, got {uri!r}")
        rest = uri[len(SCHEME) :]
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise SyncError(f"no bucket in S3 URI {uri!r}")
        return cls(bucket=bucket, prefix=prefix.strip("/"))

    def child(self, *parts: str) -> S3Location:
        joined = "/".join(p.strip("/") for p in (self.prefix, *parts) if p and p.strip("/"))
        return S3Location(self.bucket, joined)

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    @property
    def dir_prefix(self) -> str:
        """Prefix for listing this location's children ('' at the bucket root)."""
        return f"{self.prefix}/" if self.prefix else ""

    @property
    def uri(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.prefix}" if self.prefix else f"{SCHEME}{self.bucket}"

    def __str__(self) -> str:
        return self.uri


def resolve_endpoint(endpoint_url: str | None) -> str | None:
    return endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def make_client(
    endpoint_url: str | None = None, max_attempts: int = DEFAULT_MAX_ATTEMPTS, max_pool: int = 32
) -> Any:
    """A boto3 S3 client with adaptive retries and checksums only where required (S3-compatible stores)."""
    check_credential_env()
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"mode": "adaptive", "max_attempts": max_attempts},
        connect_timeout=10,
        read_timeout=60,
        max_pool_connections=max_pool,
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        s3={"addressing_style": "path"},
    )
    session = boto3.session.Session()
    region = session.region_name or "us-east-1"
    return session.client(
        "s3", endpoint_url=resolve_endpoint(endpoint_url), region_name=region, config=config
    )


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


def describe_error(exc: BaseException, loc: S3Location, endpoint_url: str | None) -> str:
    """Turn botocore's many exception shapes into one sentence that names the problem and the place."""
    from botocore.exceptions import (
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
    )

    where = f"{loc.uri} (endpoint {resolve_endpoint(endpoint_url) or 'AWS default'})"
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return (
            f"no S3 credentials for {where}: set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY "
            "(or a shared credentials file / instance role)"
        )
    if isinstance(exc, EndpointConnectionError):
        return scrub(f"cannot reach S3 endpoint for {where}: {exc}")
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("NoSuchBucket",) or status == 404 and code in ("404", "NotFound"):
            return f"S3 bucket {loc.bucket!r} does not exist at {where}"
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"):
            return f"S3 credentials rejected for {where} ({code}): check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
        if code in ("AccessDenied", "403", "Forbidden") or status == 403:
            return (
                f"S3 access denied for {where} ({code or status}): the credentials lack list/write permission"
            )
        return f"S3 error for {where}: {code or status} {err.get('Message', '')}".strip()
    return scrub(f"S3 request failed for {where}: {type(exc).__name__}: {exc}")


def check_access(client: Any, loc: S3Location, endpoint_url: str | None = None) -> None:
    """Fail now, not after hours of training: list the prefix (needs valid credentials and an existing bucket)."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        client.list_objects_v2(Bucket=loc.bucket, Prefix=loc.dir_prefix, MaxKeys=1)
    except (BotoCoreError, ClientError) as exc:
        raise StorageAccessError(describe_error(exc, loc, endpoint_url)) from exc


def list_keys(client: Any, bucket: str, prefix: str) -> dict[str, int]:
    """Every key under ``prefix`` with its size."""
    out: dict[str, int] = {}
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            out[obj["Key"]] = int(obj["Size"])
    return out


def list_children(client: Any, loc: S3Location) -> list[str]:
    """Names of the 'directories' directly under ``loc``."""
    names: list[str] = []
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=loc.bucket, Prefix=loc.dir_prefix, Delimiter="/"):
        for cp in page.get("CommonPrefixes", []):
            names.append(cp["Prefix"][len(loc.dir_prefix) :].rstrip("/"))
    return names


def delete_keys(client: Any, bucket: str, keys: list[str]) -> None:
    for i in range(0, len(keys), 1000):
        batch = keys[i : i + 1000]
        resp = client.delete_objects(
            Bucket=bucket, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True}
        )
        errors = resp.get("Errors") or []
        if errors:
            first = errors[0]
            raise SyncError(
                f"could not delete s3://{bucket}/{first.get('Key')}: {first.get('Code')} {first.get('Message')}"
            )
