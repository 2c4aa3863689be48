"""The storage adapter: the only code that talks to S3-compatible object storage (boto3 / s3transfer).

One client factory with one retry/timeout policy (``make_client``, ``RetryPolicy``: short for a controller's
polls, ``QA_S3_RETRY_S`` seconds for uploads), one URI parser (``S3Location``), one not-found test
(``is_not_found``), one error describer (``describe_error``), s3transfer for every folder transfer
(``Transfers``). Sync (manifests, checkpoints), inputs, the container entrypoint and the launcher all use it.

Modules: ``uris`` (no I/O), ``errors``, ``client``, ``objects`` (single requests), ``transfer`` (batches),
``run_store`` (``RunStore``: one run's folder), ``upload`` (``upload_dir`` for ``submit.py upload-data``).
Importing this package imports neither boto3 nor torch: boto3 is imported when a client is made.
"""

from .client import (
    DEFAULT_CHUNK_BYTES,
    DEFAULT_CONCURRENCY,
    DEFAULT_RETRY_S,
    ENV_RETRY_S,
    RetryPolicy,
    check_credential_env,
    make_client,
    resolve_endpoint,
    retry_seconds,
    retrying,
    transfer_config,
)
from .errors import (
    CREDENTIAL_VARS,
    CredentialValueError,
    Problem,
    S3UriError,
    StorageAccessError,
    StorageError,
    StorageSettingError,
    classify,
    describe_error,
    error_code,
    is_not_found,
    is_transient,
    request_errors,
    scrub,
)
from .objects import (
    check_access,
    delete_key,
    delete_keys,
    get_bytes,
    head,
    list_children,
    list_keys,
    put_bytes,
    stream_to,
    upload_file,
)
from .run_store import FolderState, RunStore
from .transfer import Progress, TransferResult, Transfers, safe_relpaths
from .upload import UploadedFile, upload_dir
from .uris import SCHEME, S3Location, split_s3_uri

__all__ = [
    "CREDENTIAL_VARS", "DEFAULT_CHUNK_BYTES", "DEFAULT_CONCURRENCY", "DEFAULT_RETRY_S", "ENV_RETRY_S",
    "SCHEME", "CredentialValueError", "FolderState", "Problem", "Progress", "RetryPolicy", "RunStore",
    "S3Location", "S3UriError", "StorageAccessError", "StorageError", "StorageSettingError", "TransferResult",
    "Transfers", "UploadedFile", "check_access", "check_credential_env", "classify", "delete_key",
    "delete_keys", "describe_error", "error_code", "get_bytes", "head", "is_not_found", "is_transient",
    "list_children", "list_keys", "make_client", "put_bytes", "request_errors", "resolve_endpoint", "retry_seconds", "retrying",
    "safe_relpaths", "scrub", "split_s3_uri", "stream_to", "transfer_config", "upload_dir", "upload_file",
]  # fmt: skip
