"""Checkpoint manifests: every file's relative path, size and sha256.

``_manifest.json`` is uploaded LAST, so its presence is the commit marker: a checkpoint whose upload died
half-way has files but no manifest and is never resumed from.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MANIFEST_NAME = "_manifest.json"
FORMAT = "qa_train.sync/1"
_BLOCK = 8 * 1024 * 1024


class ManifestError(ValueError):
    """A manifest that cannot be trusted (unparsable, wrong fields, unsafe paths)."""


@dataclass(frozen=True)
class FileEntry:
    path: str  # POSIX, relative to the checkpoint folder
    size: int
    sha256: str


@dataclass
class Manifest:
    files: list[FileEntry]
    created_at: float = field(default_factory=time.time)
    format: str = FORMAT
    # a checkpoint saved by a multi-node group: nnodes, world_size, local_world_size (``qa_train.sync.group``);
    # a resume on another node count refuses before training. None: one node.
    group: dict[str, int] | None = None

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def to_json(self) -> str:
        body = {"format": self.format, "created_at": self.created_at, "total_bytes": self.total_bytes}
        body["files"] = [asdict(f) for f in self.files]
        if self.group is not None:
            body["group"] = self.group
        return json.dumps(body, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes, source: str) -> Manifest:
        try:
            body = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ManifestError(f"{source}: manifest is not valid JSON ({exc})") from exc
        if (
            not isinstance(body, dict)
            or body.get("format") != FORMAT
            or not isinstance(body.get("files"), list)
        ):
            raise ManifestError(f"{source}: not a {FORMAT} manifest (fields 'format' and 'files' expected)")
        files = []
        for i, raw in enumerate(body["files"]):
            try:
                entry = FileEntry(path=str(raw["path"]), size=int(raw["size"]), sha256=str(raw["sha256"]))
            except (KeyError, TypeError, ValueError) as exc:
                raise ManifestError(f"{source}: files[{i}] needs path, size, sha256 ({exc})") from exc
            _check_relpath(entry.path, source)
            files.append(entry)
        group = body.get("group")
        if group is not None and not (
            isinstance(group, dict) and all(isinstance(group.get(k), int) for k in ("nnodes", "world_size"))
        ):
            raise ManifestError(f"{source}: 'group' needs integer nnodes and world_size")
        return cls(files=files, created_at=float(body.get("created_at", 0.0)), group=group)


def _check_relpath(path: str, source: str) -> None:
    parts = path.split("/")
    if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ManifestError(f"{source}: unsafe file path {path!r} in manifest")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def scan_directory(local_dir: Path) -> list[tuple[str, Path, int]]:
    """(relative POSIX path, absolute path, size) of every regular file, manifest excluded, sorted."""
    out = []
    for path in sorted(local_dir.rglob("*")):
        if path.is_file() and not path.is_symlink() or path.is_symlink() and path.resolve().is_file():
            rel = path.relative_to(local_dir).as_posix()
            if rel == MANIFEST_NAME:
                continue
            out.append((rel, path, path.stat().st_size))
    return out


def verify_file(path: Path, entry: FileEntry, source: str) -> None:
    """Raise a clear error when a downloaded file differs from its manifest entry."""
    size = path.stat().st_size
    if size != entry.size:
        raise ManifestError(
            f"{source}/{entry.path}: size {size} != manifest size {entry.size} (corrupt or tampered)"
        )
    digest = sha256_file(path)
    if digest != entry.sha256:
        raise ManifestError(
            f"{source}/{entry.path}: sha256 {digest[:16]}… != manifest {entry.sha256[:16]}… (corrupt or tampered)"
        )


def as_dict(manifest: Manifest) -> dict[str, Any]:
    return json.loads(manifest.to_json())


def verify_remote(client: Any, bucket: str, prefix: str, uri: str) -> str | None:
    """Why the committed folder ``prefix`` cannot be trusted (a file missing, of another size or sha256 than
    its manifest says), or None when every file checks out.

    Why: a committed folder counted as done on its manifest and the files' sizes, so one flipped byte in
    ``final/`` skipped training on every relaunch and failed merge on its sha256, forever. Streams each object
    through sha256 (nothing written to disk); storage errors (botocore) propagate to the caller."""
    from qa_train.storage import stream_to  # the storage adapter makes every request

    body = bytearray()
    stream_to(client, bucket, f"{prefix}/{MANIFEST_NAME}", body.extend)
    try:
        manifest = Manifest.from_json(bytes(body), f"{uri}/{MANIFEST_NAME}")
    except ManifestError as exc:
        return str(exc)
    for entry in manifest.files:
        digest, size = hashlib.sha256(), [0]

        def add(chunk: bytes, digest: Any = digest, size: list[int] = size) -> None:
            digest.update(chunk)
            size[0] += len(chunk)

        stream_to(client, bucket, f"{prefix}/{entry.path}", add, _BLOCK)
        if size[0] != entry.size:
            return f"{uri}/{entry.path}: size {size[0]} != manifest size {entry.size}"
        if digest.hexdigest() != entry.sha256:
            return f"{uri}/{entry.path}: sha256 {digest.hexdigest()[:16]}… != manifest {entry.sha256[:16]}…"
    return None
