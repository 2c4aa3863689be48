"""Checkpoints of a multi-node group with no shared filesystem: each node uploads its own ranks' files, node 0
commits the checkpoint once every node's part is in object storage.

Why: a rank writes its ZeRO shards (``global_step*/…zero_pp_rank_<r>_…``) and ``rng_state_<r>.pth`` on its own
node's disk; global rank 0 alone cannot upload node 1's (DeepSpeed#2319). So the local-rank-0 process of every
node uploads the files of its node's ranks into ``checkpoint-N/`` and then a part manifest
``checkpoint-N/_parts/node-<k>.json``; node 0 (which also holds every file no rank owns: trainer_state.json,
``latest``, the adapter…) uploads its part, waits for the others' part manifests and writes the checkpoint's
``_manifest.json`` last, covering every file and naming the group (``Manifest.group``). Stale parts of a
launch that died are removed by global rank 0 before the save (``uncommit``), before a collective every rank
passes, so a part found afterwards is this save's.

A resume on N nodes pulls, on each node, the files no rank owns plus its own ranks' files; a checkpoint saved by
another node count is refused before training with one line naming both counts.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qa_train.storage import S3Location, StorageError, Transfers, delete_keys, get_bytes, list_keys, put_bytes

from .manifest import MANIFEST_NAME, FileEntry, Manifest, ManifestError, scan_directory, sha256_file

logger = logging.getLogger("qa_train.sync")
PARTS_DIR = "_parts"
_RANK_FILE = re.compile(
    r"(?:^|/)(?:rng_state_(\d+)\.pth|(?:bf16_)?zero_pp_rank_(\d+)_mp_rank_\d+_(?:model|optim)_states\.pt)$"
)


class NodeCountError(StorageError):
    """The checkpoint was saved by another node count (or world size) than this run has."""


@dataclass(frozen=True)
class NodeGroup:
    """This process's node in a multi-node group (torchrun numbers ranks node by node)."""

    nnodes: int
    node_rank: int
    local_world_size: int

    @property
    def world_size(self) -> int:
        return self.nnodes * self.local_world_size

    def owns(self, rel: str) -> bool:
        """Whether ``rel`` (a checkpoint file) is this node's to upload: its ranks' files; node 0 also every
        file no rank owns."""
        rank = file_rank(rel)
        if rank is None:
            return self.node_rank == 0
        return rank // self.local_world_size == self.node_rank

    def needs(self, rel: str) -> bool:
        """Whether this node must have ``rel`` to resume: files no rank owns, and its own ranks' files."""
        rank = file_rank(rel)
        return rank is None or rank // self.local_world_size == self.node_rank

    def as_dict(self) -> dict[str, int]:
        return {
            "nnodes": self.nnodes,
            "world_size": self.world_size,
            "local_world_size": self.local_world_size,
        }


def file_rank(rel: str) -> int | None:
    """The global rank whose file ``rel`` is (its RNG state, its ZeRO shards), None for a shared file."""
    m = _RANK_FILE.search(rel)
    return int(m.group(1) or m.group(2)) if m else None


def current_group(env: dict[str, str] | os._Environ[str] | None = None) -> NodeGroup | None:
    """The group from torchrun's variables (``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``, ``GROUP_RANK``), None on one
    node."""
    env = os.environ if env is None else env
    try:
        world = int(env.get("WORLD_SIZE") or 1)
        # torchrun sets LOCAL_WORLD_SIZE, the deepspeed launcher LOCAL_SIZE (and CROSS_RANK); neither: one node.
        # LOCAL_SIZE first: on CPU, accelerate writes LOCAL_WORLD_SIZE=1 into the environment of a process the
        # deepspeed launcher started (it reads only LOCAL_WORLD_SIZE), which made one node look like two.
        local = int(env.get("LOCAL_SIZE") or env.get("LOCAL_WORLD_SIZE") or world)
        node = int(env.get("GROUP_RANK") or env.get("CROSS_RANK") or env.get("NODE_RANK") or 0)
    except ValueError:
        return None
    if local <= 0 or world <= local or world % local:
        return None
    return NodeGroup(world // local, node, local)


def part_name(node_rank: int) -> str:
    return f"{PARTS_DIR}/node-{node_rank}.json"


def snapshot_part(src: Path, dest: Path, group: NodeGroup) -> Path:
    """Hard-link this node's files of checkpoint ``src`` into ``dest`` (renamed into place whole)."""
    tmp = dest.parent / f".{dest.name}.partial"
    for old in (tmp, dest):
        if old.exists():
            shutil.rmtree(old)
    for rel, path, _size in scan_directory(src):
        if group.owns(rel):
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(path, tmp / rel)
            except OSError:
                shutil.copy2(path, tmp / rel)
    tmp.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, dest)
    return dest


def prune_local_checkpoints(output_dir: Path, keep: int, protect: set[str] | None = None) -> list[str]:
    """Another node's rotation: the Trainer rotates checkpoints on world rank 0 only, so without a shared disk
    the other nodes' ``checkpoint-*`` folders (their ZeRO shards, RNG states) would pile up until the disk is
    full. Keeps the newest ``keep`` and ``protect``; returns what went. Pending uploads are hard-linked
    snapshots under ``sync-pending/``: removing a folder never cuts one."""
    from .remote import CHECKPOINT_RE

    found = sorted(
        (int(m.group(1)), p)
        for p in Path(output_dir).iterdir()
        if p.is_dir() and (m := CHECKPOINT_RE.match(p.name))
    )
    gone = []
    for _step, path in found[: max(0, len(found) - keep)]:
        if path.name not in (protect or set()):
            shutil.rmtree(path, ignore_errors=True)
            gone.append(path.name)
    if gone:
        logger.info(
            "Removed this node's older local checkpoint(s) %s (save_total_limit %d)", ", ".join(gone), keep
        )
    return gone


def uncommit(client: Any, dest: S3Location) -> None:
    """Before a save of ``dest``: its manifest and any part manifests (of a launch that died) go, manifest
    first, so nothing of an earlier save can be taken for this one's."""
    keys = list_keys(client, dest.bucket, dest.dir_prefix)
    stale = [k for k in (dest.key(MANIFEST_NAME),) if k in keys]
    stale += sorted(k for k in keys if k.startswith(dest.key(PARTS_DIR) + "/"))
    if stale:
        delete_keys(client, dest.bucket, stale)


def upload_part(
    client: Any,
    local_dir: Path,
    dest: S3Location,
    group: NodeGroup,
    *,
    concurrency: int = 10,
    max_mbps: float = 0,
) -> Manifest:
    """Upload this node's files (the snapshot ``local_dir``) into ``dest``, then its part manifest."""
    files = scan_directory(local_dir)
    total = sum(size for _, _, size in files)
    entries = []
    with Transfers(client, total_bytes=total, desc=f"push part {dest.uri}", progress=False,
                   concurrency=concurrency, max_mbps=max_mbps) as batch:  # fmt: skip
        for rel, path, _size in sorted(files, key=lambda f: -f[2]):
            batch.upload(rel, path, dest.bucket, dest.key(rel))
        entries = [FileEntry(rel, size, sha256_file(path)) for rel, path, size in files]
        result = batch.finish()
    if result.failed:
        raise StorageError(f"upload of node {group.node_rank}'s part of {dest.uri} failed: {result.error}")
    part = Manifest(files=sorted(entries, key=lambda e: e.path), group=group.as_dict())
    put_bytes(client, dest.bucket, dest.key(part_name(group.node_rank)), part.to_json().encode(),
              "application/json")  # fmt: skip
    return part


def commit_when_complete(
    client: Any, dest: S3Location, group: NodeGroup, own: Manifest, *, timeout_s: float, poll_s: float = 0.5
) -> Manifest:
    """Node 0: wait for every other node's part manifest, then write ``_manifest.json`` over all files."""
    deadline = time.monotonic() + timeout_s
    parts: dict[int, Manifest] = {0: own}
    while True:
        for k in range(1, group.nnodes):
            if k in parts:
                continue
            body = get_bytes(client, dest.bucket, dest.key(part_name(k)))
            if body is not None:
                try:
                    parts[k] = Manifest.from_json(body, dest.child(part_name(k)).uri)
                except ManifestError as exc:
                    raise StorageError(str(exc)) from exc
        if len(parts) == group.nnodes:
            break
        if time.monotonic() >= deadline:
            missing = [k for k in range(group.nnodes) if k not in parts]
            raise StorageError(
                f"{dest.uri}: node(s) {', '.join(map(str, missing))} did not upload their part within "
                f"{timeout_s:.0f}s; not committed"
            )
        time.sleep(poll_s)
    files: dict[str, FileEntry] = {}
    for k in sorted(parts):
        for f in parts[k].files:
            if f.path in files and files[f.path] != f:
                raise StorageError(f"{dest.uri}/{f.path}: nodes uploaded different copies; not committed")
            files[f.path] = f
    manifest = Manifest(files=sorted(files.values(), key=lambda e: e.path), group=group.as_dict())
    put_bytes(client, dest.bucket, dest.key(MANIFEST_NAME), manifest.to_json().encode(), "application/json")
    return manifest


def check_node_count(manifest: Manifest, group: NodeGroup | None, where: str) -> None:
    """One clear error when the checkpoint's group differs from this run's (ZeRO shards and RNG states are
    per rank: another node count cannot load them)."""
    saved = manifest.group or {"nnodes": 1, "world_size": None}
    now = group.as_dict() if group is not None else {"nnodes": 1, "world_size": None}
    if saved["nnodes"] == now["nnodes"] and (
        saved.get("world_size") is None
        or now.get("world_size") is None
        or saved["world_size"] == now["world_size"]
    ):
        return

    def say(d: dict[str, Any]) -> str:
        ranks = f", {d['world_size']} ranks" if d.get("world_size") else ""
        return f"{d['nnodes']} node{'s' if d['nnodes'] != 1 else ''}{ranks}"

    raise NodeCountError(
        f"{where} was saved by {say(saved)} but this run has {say(now)}: resume on {saved['nnodes']} node(s), "
        "or start a new run (--run_name) — per-rank ZeRO shards and RNG states do not carry over"
    )


def resume_point(
    client: Any, run: S3Location, output_dir: Path, group: NodeGroup, *, endpoint_url: str | None = None
) -> tuple[str, str] | None:
    """(local dir, source URI) of the newest committed checkpoint, with what this node needs pulled; None when
    nothing is committed. Only committed checkpoints count on a group: every node must take the same one, and
    a newer local folder exists on one node's disk only."""
    from .remote import committed_checkpoints
    from .resume import TRAINER_STATE, incomplete_reason
    from .transfer import pull_directory, read_manifest

    remote = committed_checkpoints(client, run)
    if not remote:
        logger.info(
            "No committed checkpoint under %s: starting fresh (a group resumes from storage only)", run.uri
        )
        return None
    newest = remote[-1]
    src = S3Location.parse(newest.uri)
    manifest = read_manifest(client, src)
    check_node_count(manifest, group, newest.uri)
    dest = output_dir / newest.name
    wanted = [f for f in manifest.files if group.needs(f.path)]
    if dest.is_dir() and incomplete_reason(dest) is None:
        if all((dest / f.path).is_file() and (dest / f.path).stat().st_size == f.size for f in wanted):
            logger.info("Resuming from %s (local copy of %s)", newest.name, newest.uri)
            return str(dest), newest.uri
    if dest.exists():
        shutil.rmtree(dest)
    logger.info("Resuming from %s (%s): node %d pulls %d of %d files", newest.name, newest.uri,
                group.node_rank, len(wanted), len(manifest.files))  # fmt: skip
    pull_directory(client, src, dest, progress=False, endpoint_url=endpoint_url, only=group.needs)
    if not (dest / TRAINER_STATE).is_file():
        raise StorageError(f"{newest.uri} has no {TRAINER_STATE}: not a Trainer checkpoint")
    return str(dest), newest.uri
