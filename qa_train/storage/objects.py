"""Single requests on objects and listings: the calls every other part builds on."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from .errors import StorageAccessError, StorageError, describe_error, is_not_found
from .uris import S3Location

T = TypeVar("T")


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
            raise StorageError(
                f"could not delete s3://{bucket}/{first.get('Key')}: {first.get('Code')} {first.get('Message')}"
            )


def delete_key(client: Any, bucket: str, key: str) -> None:
    client.delete_object(Bucket=bucket, Key=key)


def upload_file(client: Any, path: Path, bucket: str, key: str) -> None:
    """One small file (TensorBoard events); folders go through ``Transfers``."""
    client.upload_file(str(path), bucket, key)


def _unless_missing(call: Callable[[], T]) -> T | None:
    """``call()``, or None when the object does not exist (every other error is raised)."""
    try:
        return call()
    except Exception as exc:
        if is_not_found(exc):
            return None
        raise


def head(client: Any, bucket: str, key: str) -> dict[str, Any] | None:
    """The object's metadata (``ContentLength``, ``ETag``, ``Metadata``), None when it does not exist."""
    return _unless_missing(lambda: dict(client.head_object(Bucket=bucket, Key=key)))


def get_bytes(client: Any, bucket: str, key: str) -> bytes | None:
    """The object's bytes, None when it does not exist."""
    return _unless_missing(lambda: bytes(client.get_object(Bucket=bucket, Key=key)["Body"].read()))


def put_bytes(client: Any, bucket: str, key: str, body: bytes, content_type: str | None = None) -> None:
    """One PUT (atomic for readers: they see the old object or the new one)."""
    extra = {"ContentType": content_type} if content_type else {}
    client.put_object(Bucket=bucket, Key=key, Body=body, **extra)


def stream_to(client: Any, bucket: str, key: str, write: Any, chunk: int = 1 << 20) -> None:
    """GET ``key`` and hand its bytes to ``write`` chunk by chunk (one file input, size-checked by the caller)."""
    body = client.get_object(Bucket=bucket, Key=key)["Body"]
    try:
        while data := body.read(chunk):
            write(data)
    finally:
        body.close()
