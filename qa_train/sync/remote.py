"""What a run holds remotely: committed checkpoints (and final/merged/eval), and retention of old ones."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

from qa_train.contract import TOKENIZED
from qa_train.storage import S3Location, StorageError, delete_key, delete_keys, list_keys

from .manifest import MANIFEST_NAME, ManifestError

logger = logging.getLogger("qa_train.sync")
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


@dataclass(frozen=True)
class RemoteFolder:
    name: str  # checkpoint-<step>, final, merged, eval, tokenized/<key>, …
    uri: str
    committed: bool  # manifest present and every listed file present with its size
    total_bytes: int  # bytes present remotely under the folder
    num_files: int
    problem: str = ""  # why not committed

    @property
    def step(self) -> int | None:
        m = CHECKPOINT_RE.match(self.name)
        return int(m.group(1)) if m else None


def list_run(client: Any, run: S3Location) -> list[RemoteFolder]:
    """Every top-level folder of a run, checkpoints sorted by step, a manifest-less one marked uncommitted.

    ``tokenized/`` holds one committed folder per cache key: each is listed as ``tokenized/<key>``."""
    from .transfer import read_manifest

    keys = list_keys(client, run.bucket, run.dir_prefix)
    groups: dict[str, dict[str, int]] = {}
    for key, size in keys.items():
        rel = key[len(run.dir_prefix) :]
        folder, sep, rest = rel.partition("/")
        if folder == TOKENIZED and sep:
            sub, sep, rest = rest.partition("/")
            folder = f"{TOKENIZED}/{sub}"
        if sep:
            groups.setdefault(folder, {})[rest] = size
    out = []
    for name, files in groups.items():
        loc = run.child(name)
        committed, problem = False, ""
        if MANIFEST_NAME not in files:
            problem = "no manifest (upload incomplete)"
        else:
            try:
                manifest = read_manifest(client, loc)
                missing = [f.path for f in manifest.files if files.get(f.path) != f.size]
                if missing:
                    problem = f"{len(missing)} file(s) missing or wrong size: {', '.join(missing[:3])}"
                else:
                    committed = True
            except (StorageError, ManifestError) as exc:
                problem = str(exc)
        data = {k: v for k, v in files.items() if k != MANIFEST_NAME}
        out.append(RemoteFolder(name, loc.uri, committed, sum(data.values()), len(data), problem))

    def order(f: RemoteFolder) -> tuple[int, int, str]:
        return (0, f.step, "") if f.step is not None else (1, 0, f.name)

    return sorted(out, key=order)


def is_committed(client: Any, loc: S3Location) -> bool:
    """``loc`` holds a manifest and every file it lists, with its size (one listing, one GET)."""
    from .transfer import read_manifest

    keys = list_keys(client, loc.bucket, loc.dir_prefix)
    if loc.key(MANIFEST_NAME) not in keys:
        return False
    try:
        manifest = read_manifest(client, loc)
    except ManifestError:
        return False
    return all(keys.get(loc.key(f.path)) == f.size for f in manifest.files)


def committed_checkpoints(client: Any, run: S3Location) -> list[RemoteFolder]:
    return [f for f in list_run(client, run) if f.step is not None and f.committed]


def newest_committed(client: Any, run: S3Location) -> RemoteFolder | None:
    ckpts = committed_checkpoints(client, run)
    return ckpts[-1] if ckpts else None


def delete_folder(client: Any, loc: S3Location) -> None:
    """Manifest first, so a folder whose deletion dies half-way is never mistaken for a committed one."""
    keys = list_keys(client, loc.bucket, loc.dir_prefix)
    manifest_key = loc.key(MANIFEST_NAME)
    if manifest_key in keys:
        delete_key(client, loc.bucket, manifest_key)
    delete_keys(client, loc.bucket, [k for k in keys if k != manifest_key])


def apply_retention(
    client: Any, run: S3Location, keep: int | None, protect: set[str] | None = None
) -> list[str]:
    """Keep the ``keep`` newest committed checkpoints; drop older ones and older uncommitted leftovers.

    Called right after a commit, so an old checkpoint only goes once a newer one is safely committed.
    """
    if not keep or keep <= 0:
        return []
    protect = protect or set()
    folders = [f for f in list_run(client, run) if f.step is not None]
    committed = [f for f in folders if f.committed]
    if not committed:
        return []
    kept = {f.name for f in committed[-keep:]} | protect
    newest_step = committed[-1].step or 0
    doomed = [
        f
        for f in folders
        if f.name not in kept and (f.committed or (f.step is not None and f.step < newest_step))
    ]
    for folder in doomed:
        delete_folder(client, run.child(folder.name))
        logger.info("Deleted old remote checkpoint %s (save_total_limit=%d)", folder.uri, keep)
    return [f.name for f in doomed]
