"""``upload_dir``: the user's local files into object storage (``submit.py upload-data``), skipping files that
are already there unchanged, through one s3transfer batch."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from .client import RetryPolicy, make_client
from .errors import StorageError
from .objects import head
from .transfer import Transfers
from .uris import S3Location


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
    an empty folder, ``OSError`` for an unreadable local path, ``StorageError`` or botocore errors for storage.
    """
    src = Path(local_dir)
    if not src.exists():
        raise FileNotFoundError(f"{src}: no such file or folder")
    files = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file())
    if not files:
        raise ValueError(f"{src}: no files to upload")
    dest = S3Location.parse(uri)
    client = make_client(endpoint_url, policy=RetryPolicy.short(), credentials=credentials)
    out: list[UploadedFile] = []
    todo: list[tuple[Path, str, str]] = []
    for path in files:
        rel = path.name if src.is_file() else path.relative_to(src).as_posix()
        key = dest.key(rel)
        size = path.stat().st_size
        md5, sha = _md5_sha256(path)
        meta = head(client, dest.bucket, key)
        same = (
            meta is not None
            and meta.get("ContentLength") == size
            and (meta.get("ETag", "").strip('"') == md5 or meta.get("Metadata", {}).get("sha256") == sha)
        )
        if not same:
            todo.append((path, key, sha))
        out.append(UploadedFile(f"s3://{dest.bucket}/{key}", size, same))
    total = sum(p.stat().st_size for p, _, _ in todo)
    with Transfers(client, total_bytes=total, desc=f"upload {src.name}", progress=progress) as batch:
        for path, key, sha in todo:
            batch.upload(key, path, dest.bucket, key, {"Metadata": {"sha256": sha}})
        result = batch.finish()
    if result.failed:
        assert result.error is not None
        raise StorageError(
            f"{len(result.failed)} file(s) not uploaded ({', '.join(result.failed[:3])})"
        ) from (result.error)
    return out
