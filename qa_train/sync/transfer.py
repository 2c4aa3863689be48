"""Push / pull a whole folder with its manifest: manifest last on push, verification on pull.

The transfers themselves go through the storage adapter (``qa_train.storage.Transfers``, s3transfer); here is
only the commit rule: a folder counts once ``_manifest.json`` is there, and a pulled folder appears only after
every file matched it.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from qa_train.storage import (
    S3Location,
    StorageError,
    Transfers,
    delete_key,
    delete_keys,
    describe_error,
    get_bytes,
    list_keys,
    put_bytes,
)

from .manifest import (
    MANIFEST_NAME,
    FileEntry,
    Manifest,
    ManifestError,
    scan_directory,
    sha256_file,
    verify_file,
)

logger = logging.getLogger("qa_train.sync")


def push_directory(
    client: Any,
    local_dir: Path,
    dest: S3Location,
    *,
    progress: bool = True,
    concurrency: int = 10,
    chunk_bytes: int | None = None,
    endpoint_url: str | None = None,
    extra_files: dict[str, bytes] | None = None,
    top_level_only: bool = False,
    max_mbps: float = 0,
) -> Manifest:
    """Upload every file of ``local_dir`` under ``dest`` and commit it with ``_manifest.json`` written last.

    Hashing runs in this thread while the transfer threads upload, so the sha256 pass costs no extra wall time.
    ``extra_files`` are small in-memory files (name → bytes) uploaded alongside, e.g. ``train_summary.json``.
    ``max_mbps`` caps the upload rate (0: no cap), to leave bandwidth/CPU to training.
    ``top_level_only`` skips sub-folders (the final model sits next to checkpoint-* folders in output_dir).
    Safe to call again after a failure: the folder is uncommitted first and leftovers are replaced.
    """
    local_dir = Path(local_dir)
    if not local_dir.is_dir():
        raise StorageError(f"cannot push {local_dir}: not a directory")
    extra_files = dict(extra_files or {})
    files = [f for f in scan_directory(local_dir) if f[0] not in extra_files]
    if top_level_only:
        files = [f for f in files if "/" not in f[0]]
    manifest_key = dest.key(MANIFEST_NAME)
    try:
        existing = list_keys(client, dest.bucket, dest.dir_prefix)
        if manifest_key in existing:  # uncommit first: a half-overwritten folder must never look committed
            delete_key(client, dest.bucket, manifest_key)
    except Exception as exc:  # botocore errors: describe and stop before uploading anything
        raise StorageError(f"cannot push {local_dir}: {describe_error(exc, dest, endpoint_url)}") from exc

    total = sum(size for _, _, size in files) + sum(len(b) for b in extra_files.values())
    entries: list[FileEntry] = []
    try:
        with Transfers(client, total_bytes=total, desc=f"push {dest.uri}", progress=progress,
                       concurrency=concurrency, chunk_bytes=chunk_bytes, max_mbps=max_mbps) as batch:  # fmt: skip
            # Largest first: the long multipart uploads start early and small files fill the gaps.
            for rel, path, _size in sorted(files, key=lambda f: -f[2]):
                batch.upload(rel, path, dest.bucket, dest.key(rel))
            for rel, path, size in files:
                entries.append(FileEntry(rel, size, sha256_file(path)))
            for name, data in extra_files.items():
                put_bytes(client, dest.bucket, dest.key(name), data)
                batch.bar.update(len(data))
                entries.append(FileEntry(name, len(data), hashlib.sha256(data).hexdigest()))
            result = batch.finish()
        if result.failed:
            failed = result.failed
            raise StorageError(
                f"upload to {dest.uri} failed for {len(failed)} file(s) ({', '.join(failed[:5])}"
                f"{', …' if len(failed) > 5 else ''}): {describe_error(result.error, dest, endpoint_url)}"  # type: ignore[arg-type]
            ) from result.error
        for _rel, path, size in files:
            if path.stat().st_size != size:
                raise StorageError(f"{path} changed while it was being uploaded; not committing {dest.uri}")
    except StorageError:
        raise
    except Exception as exc:
        raise StorageError(f"upload to {dest.uri} failed: {describe_error(exc, dest, endpoint_url)}") from exc

    manifest = Manifest(files=sorted(entries, key=lambda e: e.path))
    wanted = {dest.key(e.path) for e in manifest.files} | {manifest_key}
    try:
        stale = [k for k in existing if k not in wanted]
        if stale:  # leftovers of an earlier, different upload to the same folder
            delete_keys(client, dest.bucket, stale)
        put_bytes(client, dest.bucket, manifest_key, manifest.to_json().encode(), "application/json")
    except Exception as exc:
        raise StorageError(f"commit of {dest.uri} failed: {describe_error(exc, dest, endpoint_url)}") from exc
    return manifest


def read_manifest(client: Any, src: S3Location) -> Manifest:
    """The committed manifest of ``src``; a clear error when the folder is not committed."""
    try:
        body = get_bytes(client, src.bucket, src.key(MANIFEST_NAME))
    except Exception as exc:
        raise StorageError(describe_error(exc, src, None)) from exc
    if body is None:
        raise StorageError(
            f"{src.uri} has no {MANIFEST_NAME}: not a committed checkpoint (upload incomplete?)"
        )
    return Manifest.from_json(body, f"{src.uri}/{MANIFEST_NAME}")


def pull_directory(
    client: Any,
    src: S3Location,
    dest: Path,
    *,
    progress: bool = True,
    concurrency: int = 10,
    endpoint_url: str | None = None,
    only: Callable[[str], bool] | None = None,
) -> Manifest:
    """Download a committed folder, verify every size and sha256, then move it into place atomically.

    Nothing appears at ``dest`` unless every file verified: a failed pull leaves no half-written checkpoint.
    ``only(path)``: the files to fetch (a node of a group fetches its own ranks' shards); the manifest is whole.
    """
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise StorageError(f"cannot pull {src.uri} into {dest}: the folder exists and is not empty")
    manifest = read_manifest(client, src)
    if only is not None:
        manifest = replace(manifest, files=[f for f in manifest.files if only(f.path)])
    tmp = dest.parent / f".{dest.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    ok = False
    try:
        with Transfers(client, total_bytes=manifest.total_bytes, desc=f"pull {src.uri}", progress=progress,
                       concurrency=concurrency) as batch:  # fmt: skip
            for entry in manifest.files:
                batch.download(entry.path, src.bucket, src.key(entry.path), tmp / entry.path, entry.size)
            result = batch.finish()
        if result.failed:
            raise StorageError(
                f"download of {src.uri}/{result.failed[0]} failed: "
                f"{describe_error(result.error, src, endpoint_url)}"  # type: ignore[arg-type]
            ) from result.error
        for entry in manifest.files:
            try:
                verify_file(tmp / entry.path, entry, src.uri)
            except ManifestError as exc:
                raise StorageError(f"verification failed: {exc}") from exc
        if dest.exists():
            dest.rmdir()
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(dest)
        ok = True
    finally:
        if not ok:
            shutil.rmtree(tmp, ignore_errors=True)
    return manifest
