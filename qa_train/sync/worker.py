"""Upload worker process: ``python -m qa_train.sync.worker`` (started by the training process, rank 0).

Why a process and not a thread: botocore, hashing and socket work would otherwise share the training process's
GIL and CPU priority; a separate, niced process keeps the training loop's step time flat.

Protocol (JSON lines): stdin line 1 = config, then one job per line ``{"name", "path", "protect"}``; stdout =
one result per job ``{"name", "ok", "error", "files", "bytes", "seconds"}``. Logs go to stderr. On stdin EOF
(training ended) the worker finishes the jobs it already received, then exits: a checkpoint already
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
from pathlib import Path
from typing import Any

from .remote import apply_retention
from .storage import S3Location, make_client
from .transfer import push_directory

logger = logging.getLogger("qa_train.sync")
PENDING_DIR = "sync-pending"  # hard-linked snapshots waiting for upload (survive the Trainer's own rotation)


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
) -> dict[str, Any]:
    """Push one checkpoint, drop its pending snapshot, apply remote retention; never raises."""
    dest = run.child(name)
    start = time.monotonic()
    try:
        manifest = push_directory(
            client,
            local_dir,
            dest,
            progress=False,
            concurrency=concurrency,
            endpoint_url=endpoint_url,
            max_mbps=max_mbps,
        )
    except Exception as exc:  # reported back; the snapshot stays for a later `sync push`
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
    if local_dir.parent.name == PENDING_DIR:
        shutil.rmtree(local_dir, ignore_errors=True)
    try:
        apply_retention(client, run, keep, protect)
    except Exception as exc:  # housekeeping: never fail the run for it
        logger.warning("Remote retention under %s failed: %s", run.uri, exc)
    return {"name": name, "ok": True, "error": "", "files": len(manifest.files), "bytes": manifest.total_bytes,
            "seconds": secs}  # fmt: skip


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
    client = make_client(config.get("endpoint_url"), max_attempts=int(config.get("max_attempts", 6)))
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
        )
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
