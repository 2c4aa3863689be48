"""Push / pull a whole folder: parallel multipart transfers, manifest last on push, verification on pull."""

from __future__ import annotations

import hashlib
import logging
import shutil
import threading
from pathlib import Path
from typing import Any

from .manifest import (
    MANIFEST_NAME,
    FileEntry,
    Manifest,
    ManifestError,
    scan_directory,
    sha256_file,
    verify_file,
)
from .storage import DEFAULT_CHUNK_BYTES, S3Location, SyncError, describe_error, list_keys, transfer_config

logger = logging.getLogger("qa_train.sync")


class _Progress:
    """Thread-safe byte counter feeding one tqdm bar (s3transfer calls back from its worker threads)."""

    def __init__(self, total: int, desc: str, enabled: bool) -> None:
        from tqdm.auto import tqdm

        self._lock = threading.Lock()
        self.bar = tqdm(
            total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, disable=not enabled
        )

    def update(self, n: int) -> None:
        with self._lock:
            self.bar.update(n)

    def close(self) -> None:
        self.bar.close()


def _subscriber(progress: _Progress, size: int | None = None) -> Any:
    from s3transfer.subscribers import BaseSubscriber

    class Sub(BaseSubscriber):
        def on_queued(self, future: Any, **kwargs: Any) -> None:
            if size is not None:
                future.meta.provide_transfer_size(size)

        def on_progress(self, future: Any, bytes_transferred: int, **kwargs: Any) -> None:
            progress.update(bytes_transferred)

    return Sub()


def _manager(client: Any, concurrency: int, chunk_bytes: int | None, max_mbps: float = 0) -> Any:
    from s3transfer.manager import TransferManager

    chunk = DEFAULT_CHUNK_BYTES if chunk_bytes is None else chunk_bytes
    cfg = transfer_config(concurrency, chunk, max_mbps)
    return TransferManager(client, cfg)


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
    """
    local_dir = Path(local_dir)
    if not local_dir.is_dir():
        raise SyncError(f"cannot push {local_dir}: not a directory")
    extra_files = dict(extra_files or {})
    files = [f for f in scan_directory(local_dir) if f[0] not in extra_files]
    if top_level_only:
        files = [f for f in files if "/" not in f[0]]
    manifest_key = dest.key(MANIFEST_NAME)
    try:
        existing = list_keys(client, dest.bucket, dest.dir_prefix)
        if manifest_key in existing:  # uncommit first: a half-overwritten folder must never look committed
            client.delete_object(Bucket=dest.bucket, Key=manifest_key)
    except Exception as exc:  # botocore errors: describe and stop before uploading anything
        raise SyncError(f"cannot push {local_dir}: {describe_error(exc, dest, endpoint_url)}") from exc

    total = sum(size for _, _, size in files) + sum(len(b) for b in extra_files.values())
    bar = _Progress(total, f"push {dest.uri}", progress)
    manager = _manager(client, concurrency, chunk_bytes, max_mbps)
    futures = []
    entries: list[FileEntry] = []
    failed: list[str] = []
    try:
        # Largest first: the long multipart uploads start early and small files fill the gaps.
        for rel, path, _size in sorted(files, key=lambda f: -f[2]):
            fut = manager.upload(str(path), dest.bucket, dest.key(rel), subscribers=[_subscriber(bar)])
            futures.append((rel, fut))
        for rel, path, size in files:
            entries.append(FileEntry(rel, size, sha256_file(path)))

        for name, data in extra_files.items():
            client.put_object(Bucket=dest.bucket, Key=dest.key(name), Body=data)
            bar.update(len(data))
            entries.append(FileEntry(name, len(data), hashlib.sha256(data).hexdigest()))
        first_exc: BaseException | None = None
        for rel, fut in futures:
            try:
                fut.result()
            except Exception as exc:
                failed.append(rel)
                first_exc = first_exc or exc
        if failed:
            raise SyncError(
                f"upload to {dest.uri} failed for {len(failed)} file(s) ({', '.join(failed[:5])}"
                f"{', …' if len(failed) > 5 else ''}): {describe_error(first_exc, dest, endpoint_url)}"
            ) from first_exc
        for _rel, path, size in files:
            if path.stat().st_size != size:
                raise SyncError(f"{path} changed while it was being uploaded; not committing {dest.uri}")
    except SyncError:
        raise
    except Exception as exc:
        raise SyncError(f"upload to {dest.uri} failed: {describe_error(exc, dest, endpoint_url)}") from exc
    finally:
        manager.shutdown(cancel=bool(failed))
        bar.close()

    manifest = Manifest(files=sorted(entries, key=lambda e: e.path))
    wanted = {dest.key(e.path) for e in manifest.files} | {manifest_key}
    try:
        stale = [k for k in existing if k not in wanted]
        if stale:  # leftovers of an earlier, different upload to the same folder
            from .storage import delete_keys

            delete_keys(client, dest.bucket, stale)
        client.put_object(
            Bucket=dest.bucket,
            Key=manifest_key,
            Body=manifest.to_json().encode(),
            ContentType="application/json",
        )
    except Exception as exc:
        raise SyncError(f"commit of {dest.uri} failed: {describe_error(exc, dest, endpoint_url)}") from exc
    return manifest


def read_manifest(client: Any, src: S3Location) -> Manifest:
    """The committed manifest of ``src``; a clear error when the folder is not committed."""
    from botocore.exceptions import ClientError

    key = src.key(MANIFEST_NAME)
    try:
        body = client.get_object(Bucket=src.bucket, Key=key)["Body"].read()
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code")
        if code in ("NoSuchKey", "404", "NotFound"):
            raise SyncError(
                f"{src.uri} has no {MANIFEST_NAME}: not a committed checkpoint (upload incomplete?)"
            ) from exc
        raise SyncError(describe_error(exc, src, None)) from exc
    return Manifest.from_json(body, f"{src.uri}/{MANIFEST_NAME}")


def pull_directory(
    client: Any,
    src: S3Location,
    dest: Path,
    *,
    progress: bool = True,
    concurrency: int = 10,
    endpoint_url: str | None = None,
) -> Manifest:
    """Download a committed folder, verify every size and sha256, then move it into place atomically.

    Nothing appears at ``dest`` unless every file verified: a failed pull leaves no half-written checkpoint.
    """
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise SyncError(f"cannot pull {src.uri} into {dest}: the folder exists and is not empty")
    manifest = read_manifest(client, src)
    tmp = dest.parent / f".{dest.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    bar = _Progress(manifest.total_bytes, f"pull {src.uri}", progress)
    manager = _manager(client, concurrency, None)
    ok = False
    try:
        futures = []
        for entry in manifest.files:
            target = tmp / entry.path
            target.parent.mkdir(parents=True, exist_ok=True)
            fut = manager.download(
                src.bucket, src.key(entry.path), str(target), subscribers=[_subscriber(bar, entry.size)]
            )
            futures.append((entry, fut))
        for entry, fut in futures:
            try:
                fut.result()
            except Exception as exc:
                raise SyncError(
                    f"download of {src.uri}/{entry.path} failed: {describe_error(exc, src, endpoint_url)}"
                ) from exc
        for entry in manifest.files:
            try:
                verify_file(tmp / entry.path, entry, src.uri)
            except ManifestError as exc:
                raise SyncError(f"verification failed: {exc}") from exc
        if dest.exists():
            dest.rmdir()
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(dest)
        ok = True
    finally:
        manager.shutdown(cancel=not ok)
        bar.close()
        if not ok:
            shutil.rmtree(tmp, ignore_errors=True)
    return manifest
