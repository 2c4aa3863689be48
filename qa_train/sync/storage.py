"""Sync's names for the storage adapter's parts (``qa_train.storage`` is the only code that talks to S3).

``SyncError`` is the adapter's ``StorageError`` under the name sync's callers catch (``train`` exits 3 on it).
"""

from __future__ import annotations

from qa_train.storage import (
    CREDENTIAL_VARS,
    DEFAULT_CHUNK_BYTES,
    DEFAULT_CONCURRENCY,
    CredentialValueError,
    RetryPolicy,
    S3Location,
    StorageAccessError,
    StorageError,
    check_access,
    check_credential_env,
    delete_keys,
    describe_error,
    list_children,
    list_keys,
    make_client,
    resolve_endpoint,
    scrub,
)

SyncError = StorageError

__all__ = [
    "CREDENTIAL_VARS", "DEFAULT_CHUNK_BYTES", "DEFAULT_CONCURRENCY", "CredentialValueError", "RetryPolicy",
    "S3Location", "StorageAccessError", "SyncError", "check_access", "check_credential_env", "delete_keys",
    "describe_error", "list_children", "list_keys", "make_client", "resolve_endpoint", "scrub",
]  # fmt: skip
