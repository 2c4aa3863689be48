"""What went wrong with storage, said once: the error types, the not-found test, the transient test and the
one sentence (``describe_error``) that names the problem and the place. botocore is imported lazily."""

from __future__ import annotations

import os
from enum import StrEnum
from typing import Any

# The AWS variables whose values are secret (checked before a client is made, never echoed in an error).
CREDENTIAL_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
NOT_FOUND_CODES = ("NoSuchKey", "404", "NotFound")
DENIED_CODES = ("AccessDenied", "403", "Forbidden")
BAD_CREDENTIAL_CODES = ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken")
# Answers that mean "not now" (the store is overloaded or restarting), not "never".
TRANSIENT_CODES = ("SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed",
                   "InternalError", "ServiceUnavailable", "503", "500", "502", "504")  # fmt: skip


class StorageError(RuntimeError):
    """A storage failure the user has to act on (or wait out); the message says what and where."""


class StorageAccessError(StorageError):
    """Credentials, bucket or endpoint problem found before any work started."""


class CredentialValueError(StorageAccessError):
    """An AWS credential variable whose value cannot be sent (a newline, CRLF, control character): bad input."""


class S3UriError(StorageError, ValueError):
    """A URI that is not ``s3://bucket/…`` (bad input, never retried)."""


class StorageSettingError(StorageError, ValueError):
    """A storage setting (``QA_S3_RETRY_S``) that is not usable: bad input, named with its value."""


def scrub(text: str) -> str:
    """``text`` without the values of the AWS credential variables (a library's error may quote them)."""
    for name in CREDENTIAL_VARS:
        value = os.environ.get(name, "")
        for form in {value, value.strip(), repr(value)[1:-1]}:
            if len(form) >= 8:
                text = text.replace(form, "***")
    return text


def _code_status(exc: BaseException) -> tuple[str, int | None]:
    response: dict[str, Any] = getattr(exc, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    return code, response.get("ResponseMetadata", {}).get("HTTPStatusCode")


def _chain(exc: BaseException | None) -> list[BaseException]:
    out: list[BaseException] = []
    while exc is not None and exc not in out:
        out.append(exc)
        exc = exc.__cause__ or exc.__context__
    return out


def request_errors() -> tuple[type[BaseException], ...]:
    """What a request to storage can raise (botocore's two roots), for an ``except`` that names the place."""
    from botocore.exceptions import BotoCoreError, ClientError

    return (BotoCoreError, ClientError)


def is_not_found(exc: BaseException) -> bool:
    """The object (or key prefix) does not exist: a 404 from HEAD, ``NoSuchKey`` from GET. A missing *bucket*
    is not "not found" here: it is a setup error that ``describe_error`` names."""
    code, status = _code_status(exc)
    return code in NOT_FOUND_CODES or (status == 404 and code != "NoSuchBucket")


def is_transient(exc: BaseException) -> bool:
    """Worth retrying: the store is unreachable, timed out, dropped the connection or said "not now" (5xx,
    throttling). Looks through the exception's causes (a ``StorageError`` wrapping a botocore error)."""
    try:
        from botocore.exceptions import ClientError, HTTPClientError
        from botocore.exceptions import ConnectionError as BotoConnectionError
    except ImportError:  # pragma: no cover - boto3 is in every image
        return False
    for e in _chain(exc):
        if isinstance(e, BotoConnectionError | HTTPClientError | ConnectionError | TimeoutError):
            return True
        if isinstance(e, ClientError):
            code, status = _code_status(e)
            return code in TRANSIENT_CODES or (status is not None and status >= 500)
    return False


class Problem(StrEnum):
    """What a storage error means, whatever shape botocore gave it (messages are built from this)."""

    NO_CREDENTIALS = "no credentials"
    BAD_CREDENTIALS = "credentials rejected"
    DENIED = "access denied"
    NO_BUCKET = "no such bucket"
    NOT_FOUND = "not found"
    UNREACHABLE = "unreachable"
    OTHER = "other"


def classify(exc: BaseException) -> Problem:
    from botocore.exceptions import ClientError, NoCredentialsError, PartialCredentialsError

    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return Problem.NO_CREDENTIALS
    if isinstance(exc, ClientError):
        code, status = _code_status(exc)
        if code == "NoSuchBucket":
            return Problem.NO_BUCKET
        if is_not_found(exc):
            return Problem.NOT_FOUND
        if code in BAD_CREDENTIAL_CODES:
            return Problem.BAD_CREDENTIALS
        if code in DENIED_CODES or status == 403:
            return Problem.DENIED
        return Problem.OTHER
    return Problem.UNREACHABLE if is_transient(exc) else Problem.OTHER


def error_code(exc: BaseException) -> str:
    """The S3 error code, else the HTTP status, else the exception's type (for short messages)."""
    code, status = _code_status(exc)
    return code or (str(status) if status else type(exc).__name__)


def describe_error(exc: BaseException, where: Any, endpoint_url: str | None = None) -> str:
    """Turn botocore's many exception shapes into one sentence that names the problem and the place.

    ``where`` is an ``S3Location`` or a URI string. A listing's 404 means the bucket is missing."""
    from botocore.exceptions import EndpointConnectionError

    from .client import resolve_endpoint

    if isinstance(exc, StorageError):
        return scrub(str(exc))
    uri = getattr(where, "uri", None) or str(where)
    bucket = getattr(where, "bucket", None) or uri.removeprefix("s3://").partition("/")[0]
    place = f"{uri} (endpoint {resolve_endpoint(endpoint_url) or 'AWS default'})"
    problem, (code, status) = classify(exc), _code_status(exc)
    if problem is Problem.NO_CREDENTIALS:
        return (
            f"no S3 credentials for {place}: set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY "
            "(or a shared credentials file / instance role)"
        )
    if isinstance(exc, EndpointConnectionError):
        return scrub(f"cannot reach S3 endpoint for {place}: {exc}")
    if problem is Problem.NO_BUCKET or problem is Problem.NOT_FOUND and code in ("404", "NotFound"):
        return f"S3 bucket {bucket!r} does not exist at {place}"
    if problem is Problem.BAD_CREDENTIALS:
        return (
            f"S3 credentials rejected for {place} ({code}): check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
        )
    if problem is Problem.DENIED:
        return f"S3 access denied for {place} ({code or status}): the credentials lack list/write permission"
    if code or status:
        message = getattr(exc, "response", {}).get("Error", {}).get("Message", "")
        return scrub(f"S3 error for {place}: {code or status} {message}".strip())
    return scrub(f"S3 request failed for {place}: {type(exc).__name__}: {exc}")
