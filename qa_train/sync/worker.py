"""Upload worker process: ``python -m qa_train.sync.worker`` (started by the training process, rank 0).

Why a process and not a thread: botocore, hashing and socket work would otherwise share the training process's
GIL and CPU priority; a separate, niced process keeps the training loop's step time flat.

Protocol (JSON lines): stdin line 1 = config, then one job per line ``{"name", "path", "protect", "retry_until",
"if_missing"}``; stdout = one result per job ``{"name", "ok", "error", "files", "bytes", "seconds"}``. Logs go to
stderr. Each upload is retried through a storage outage for ``QA_S3_RETRY_S`` seconds (default 600; a job's
``retry_until`` ends it sooner): a checkpoint saved while storage is down is committed once it answers again.
On stdin EOF (training ended) the worker finishes the jobs it already received, then exits: a checkpoint already
handed over still gets committed when training ends. If the training process dies (SIGKILL, OOM kill) the
worker is killed with it (Linux parent-death signal), as it would be when a spot machine vanishes: what is
committed then is exactly what a restart resumes from.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from qa_train.storage import RetryPolicy, S3Location, make_client, retrying

from .remote import apply_retention, is_committed
from .transfer import push_directory

logger = logging.getLogger("qa_train.sync")
PENDING_DIR = "sync-pending"  # hard-linked snapshots waiting for upload (survive the Trainer's own rotation)
HELD_RECORD = "inputs.json"  # the run's input record, when storage was down as it was written


def hold_record(output_dir: Path, body: bytes) -> None:
    """Keep the record to send under ``sync-pending/`` (atomic: a reader sees all of it or none)."""
    from qa_train.fsutil import atomic_write_text

    (Path(output_dir) / PENDING_DIR).mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(output_dir) / PENDING_DIR / HELD_RECORD, body.decode())


def send_held_record(client: Any, run: S3Location, output_dir: Path) -> bool:
    """PUT a held record to ``<run>/inputs.json`` and drop it; False when none is held. Errors propagate."""
    from qa_train.fingerprint import INPUTS_NAME
    from qa_train.storage import put_bytes

    held = Path(output_dir) / PENDING_DIR / HELD_RECORD
    try:
        body = held.read_bytes()
    except FileNotFoundError:
        return False
    put_bytes(client, run.bucket, run.key(INPUTS_NAME), body, "application/json")
    held.unlink(missing_ok=True)
    logger.info("Recorded the run's input fingerprints in %s", run.child(INPUTS_NAME).uri)
    return True


def upload_checkpoint(
    client: Any,
    run: S3Location,
    name: str,
    local_dir: Path,
    *,
    keep: int | None,
    protect: set[str],
    concurrency: int,
    max_mbps: float = 0,
    endpoint_url: str | None,
    policy: RetryPolicy | None = None,
    if_missing: bool = False,
    group: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Push one checkpoint (retried through an outage for ``policy.total_s``), drop its pending snapshot,
    apply remote retention; never raises. ``if_missing``: a snapshot left by an earlier launch, dropped
    without an upload when that checkpoint is committed already."""
    dest = run.child(name)
    policy = policy or RetryPolicy.uploads()
    start = time.monotonic()
    try:
        if local_dir.parent.name == PENDING_DIR and (group is None or group["node_rank"] == 0):
            retrying(lambda: send_held_record(client, run, local_dir.parent.parent), policy, "input record")
        if if_missing and retrying(lambda: is_committed(client, dest), policy, f"check {dest.uri}"):
            logger.info("%s is committed already: dropping the local snapshot %s", dest.uri, local_dir)
            _drop_snapshot(local_dir)
            return {"name": name, "ok": True, "error": "", "files": 0, "bytes": 0, "seconds": 0.0}
        if group is not None:  # one node's part of a multi-node checkpoint (qa_train.sync.group)
            manifest = _upload_group_part(client, dest, local_dir, group, concurrency, max_mbps, policy, name)
            if group["node_rank"] != 0:
                _drop_snapshot(local_dir)  # node 0 commits; retention is node 0's too
                return {"name": name, "ok": True, "error": "", "files": len(manifest.files),
                        "bytes": manifest.total_bytes, "seconds": max(time.monotonic() - start, 1e-9)}  # fmt: skip
        else:
            manifest = retrying(
                lambda: push_directory(client, local_dir, dest, progress=False, concurrency=concurrency,
                                       endpoint_url=endpoint_url, max_mbps=max_mbps),
                policy,
                f"upload of {name}",
            )  # fmt: skip
    except Exception as exc:  # reported back; the snapshot stays to be re-sent (or for `sync push`)
        logger.error("Upload of %s to %s failed: %s", name, dest.uri, exc)
        return {"name": name, "ok": False, "error": str(exc)}
    secs = max(time.monotonic() - start, 1e-9)
    logger.info(
        "Committed %s (%d files, %.1f MB in %.1fs, %.1f MB/s)",
        dest.uri,
        len(manifest.files),
        manifest.total_bytes / 1e6,
        secs,
        manifest.total_bytes / 1e6 / secs,
    )
    _drop_snapshot(local_dir)
    try:
        apply_retention(client, run, keep, protect)
    except Exception as exc:  # housekeeping: never fail the run for it
        logger.warning("Remote retention under %s failed: %s", run.uri, exc)
    return {"name": name, "ok": True, "error": "", "files": len(manifest.files), "bytes": manifest.total_bytes,
            "seconds": secs}  # fmt: skip


def _upload_group_part(
    client: Any,
    dest: S3Location,
    local_dir: Path,
    group: dict[str, int],
    concurrency: int,
    max_mbps: float,
    policy: RetryPolicy,
    name: str,
) -> Any:
    """This node's part of ``dest``; on node 0 also the commit once every node's part is there (waiting up to
    the retry policy's total time for them)."""
    from .group import NodeGroup, commit_when_complete, upload_part

    g = NodeGroup(group["nnodes"], group["node_rank"], group["local_world_size"])
    part = retrying(lambda: upload_part(client, local_dir, dest, g, concurrency=concurrency, max_mbps=max_mbps),
                    policy, f"upload of node {g.node_rank}'s part of {name}")  # fmt: skip
    if g.node_rank != 0:
        return part
    return commit_when_complete(client, dest, g, part, timeout_s=max(policy.total_s, 1.0))


def pending_snapshots(output_dir: Path) -> list[Path]:
    """Complete snapshots waiting under ``output_dir/sync-pending/`` (oldest step first): uploads an earlier
    launch (or this one) could not finish. A snapshot is renamed into place whole, so each one is complete."""
    from .remote import CHECKPOINT_RE

    root = Path(output_dir) / PENDING_DIR
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and CHECKPOINT_RE.match(p.name)]
    return sorted(found, key=lambda p: int(p.name.rsplit("-", 1)[1]))


def pending_uploads(output_dir: Path) -> list[str]:
    """What this disk still has to send: the held input record and the pending snapshots' names."""
    held = [HELD_RECORD] if (Path(output_dir) / PENDING_DIR / HELD_RECORD).is_file() else []
    return held + [p.name for p in pending_snapshots(output_dir)]


def flush_pending(
    output_dir: Path, run: S3Location, endpoint_url: str | None = None, *, total_s: float | None = None
) -> list[str]:
    """Upload every pending snapshot (one committed already is just dropped), retrying through an outage until
    ``total_s`` (``QA_S3_RETRY_S``) has passed; the names still pending after that. No retention here: the end
    of a run deletes nothing."""
    snaps = pending_snapshots(output_dir)
    held = (Path(output_dir) / PENDING_DIR / HELD_RECORD).is_file()
    if not snaps and not held:
        return []
    policy = RetryPolicy.uploads()
    deadline = time.time() + (policy.total_s if total_s is None else total_s)
    logger.warning(
        "%d checkpoint(s) not uploaded yet (%s): retrying for up to %.0fs before the run ends",
        len(snaps), ", ".join(p.name for p in snaps), deadline - time.time(),
    )  # fmt: skip
    client = make_client(endpoint_url, policy=policy)
    left = []
    if held and not snaps:  # with snapshots, the first upload sends it before its commit
        try:
            retrying(
                lambda: send_held_record(client, run, output_dir), _until(policy, deadline), "input record"
            )
        except Exception as exc:
            logger.error("The input record for %s is still not sent: %s", run.uri, exc)
            left.append(HELD_RECORD)
    for snap in snaps:
        result = upload_checkpoint(client, run, snap.name, snap, keep=None, protect=set(), concurrency=10,
                                   endpoint_url=endpoint_url, policy=_until(policy, deadline), if_missing=True)  # fmt: skip
        if not result["ok"]:
            left.append(snap.name)
    return left


def _until(policy: RetryPolicy, retry_until: float | None) -> RetryPolicy:
    """The policy with its total time cut to end at ``retry_until`` (epoch seconds), when given."""
    return (
        policy if retry_until is None else replace(policy, total_s=max(0.0, float(retry_until) - time.time()))
    )


def _drop_snapshot(local_dir: Path) -> None:
    if local_dir.parent.name == PENDING_DIR:
        shutil.rmtree(local_dir, ignore_errors=True)


def _die_with_parent(parent_pid: int) -> None:
    """Linux: SIGKILL this worker when the training process dies, instead of living on as an orphan."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if parent_pid and os.getppid() != parent_pid:  # the parent died before prctl took effect
        sys.exit(1)


def main() -> int:
    from qa_train.logs import setup_logging

    setup_logging()
    import signal

    # The training process decides what a SIGTERM/SIGINT means (save and commit within the grace, or stop):
    # a signal sent to the whole process group must not cut the upload it is waiting for.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    config = json.loads(sys.stdin.readline() or "{}")
    _die_with_parent(int(config.get("parent_pid") or 0))
    if config.get("nice"):
        os.nice(int(config["nice"]))
    run = S3Location.parse(config["run"])
    policy = RetryPolicy.uploads().with_attempts(int(config.get("max_attempts", 6)))
    client = make_client(config.get("endpoint_url"), policy=policy)
    for line in sys.stdin:
        if not line.strip():
            continue
        job = json.loads(line)
        result = upload_checkpoint(
            client,
            run,
            job["name"],
            Path(job["path"]),
            keep=config.get("keep"),
            protect=set(job.get("protect") or ()),
            concurrency=int(config.get("concurrency", 10)),
            max_mbps=float(config.get("max_mbps") or 0),
            endpoint_url=config.get("endpoint_url"),
            policy=_until(policy, job.get("retry_until")),
            if_missing=bool(job.get("if_missing")),
            group=config.get("group"),
        )
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
