"""Upload every saved checkpoint in the background (a niced worker process) so training never waits on S3.

Nothing is given up lightly: each upload is retried through an outage (``QA_S3_RETRY_S``); one that failed
anyway keeps its snapshot under ``output_dir/sync-pending/`` and is sent again as soon as another upload
succeeds (storage answers again), at the end of training (``settle``), and by the next launch on the same disk
(``resend_pending``), which says so.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from qa_train.storage import S3Location, retry_seconds

from .worker import PENDING_DIR, pending_snapshots

logger = logging.getLogger("qa_train.sync")


@dataclass
class UploadFailure:
    name: str
    local_path: Path
    error: str


def snapshot(src: Path, dest: Path) -> Path:
    """Hard-link ``src`` into ``dest`` (copy where links are impossible).

    The Trainer may delete ``checkpoint-N`` (save_total_limit) while it is still uploading; the links keep
    the bytes alive at no disk cost, and a failed upload leaves the snapshot for a later ``sync push``.
    """
    tmp = dest.parent / f".{dest.name}.partial"  # renamed into place whole: a leftover is always complete
    for old in (tmp, dest):
        if old.exists():
            shutil.rmtree(old)

    def link(s: str, d: str) -> None:
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    shutil.copytree(src, tmp, copy_function=link)
    os.replace(tmp, dest)
    return dest


def dir_bytes(path: Path) -> int:
    """Size of every file under ``path`` (0 when it vanished)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.stat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


class BackgroundUploader:
    """Feeds checkpoints to one niced upload worker process, one at a time (each upload is parallel multipart).

    ``wait()`` blocks until every submitted checkpoint is committed or failed; ``failures`` names the failed
    ones. A worker that dies turns every outstanding job into a failure instead of hanging the run.
    """

    def __init__(
        self,
        run: S3Location,
        *,
        endpoint_url: str | None = None,
        max_attempts: int = 6,
        keep: int | None = None,
        concurrency: int = 10,
        max_mbps: float = 0,
        nice: int = 10,
        group: Any = None,
    ) -> None:
        self.run = run
        self.group = group  # qa_train.sync.group.NodeGroup: this node uploads its part of each checkpoint
        self.concurrency = concurrency
        self.progress = False
        self.failures: list[UploadFailure] = []
        self.committed: list[str] = []
        self.transfers: list[tuple[int, float]] = []  # (bytes, seconds) of each commit: observed throughput
        self.protect: set[str] = set()
        self._paths: dict[str, Path] = {}
        self._pending: set[str] = set()
        self.resent: list[
            str
        ] = []  # names sent again after a failure (storage answered again, or at the end)
        self._cond = threading.Condition()
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "qa_train.sync.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
            env=_worker_env(),
        )
        config = {"run": run.uri, "endpoint_url": endpoint_url, "max_attempts": max_attempts, "keep": keep,
                  "concurrency": concurrency, "max_mbps": max_mbps, "nice": nice, "parent_pid": os.getpid()}  # fmt: skip
        if group is not None:
            config["group"] = {"nnodes": group.nnodes, "node_rank": group.node_rank,
                               "local_world_size": group.local_world_size}  # fmt: skip
        self._send(config)
        self._reader = threading.Thread(target=self._read, name="qa-train-s3-sync", daemon=True)
        self._reader.start()

    def _send(self, payload: dict[str, Any]) -> bool:
        try:
            assert self._proc.stdin is not None
            self._proc.stdin.write(json.dumps(payload) + "\n")
            self._proc.stdin.flush()
            return True
        except (BrokenPipeError, OSError, ValueError):
            return False

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            try:
                result = json.loads(line)
            except json.JSONDecodeError:
                continue
            with self._cond:
                name = result.get("name", "?")
                self._pending.discard(name)
                ok = bool(result.get("ok"))
                if ok:
                    self.committed.append(name)
                    self.failures = [f for f in self.failures if f.name != name]  # an earlier try of it
                    if result.get("bytes") and result.get("seconds"):
                        self.transfers.append((int(result["bytes"]), float(result["seconds"])))
                else:
                    self.failures.append(
                        UploadFailure(name, self._paths.get(name, Path("?")), result.get("error", ""))
                    )
                retry = ok and bool(self.failures)
                self._cond.notify_all()
            if retry:  # storage answers again: what failed meanwhile goes again, oldest first
                self.resend_failed("storage answers again")
        code = self._proc.wait()
        with self._cond:  # the worker is gone: whatever it still owed us failed
            for name in sorted(self._pending):
                self.failures.append(
                    UploadFailure(name, self._paths[name], f"upload worker exited with code {code}")
                )
            self._pending.clear()
            self._cond.notify_all()

    def submit(
        self, name: str, local_dir: Path, *, retry_s: float | None = None, if_missing: bool = False
    ) -> None:
        """Queue one upload; ``retry_s`` overrides how long the worker retries it through an outage."""
        with self._cond:
            self._paths[name] = local_dir
            self._pending.add(name)
        job: dict[str, Any] = {"name": name, "path": str(local_dir), "protect": sorted(self.protect)}
        if retry_s is not None:  # a deadline, so that a queue of them together stays within the bound
            job["retry_until"] = time.time() + max(0.0, retry_s)
        if if_missing:
            job["if_missing"] = True
        if not self._send(job):
            with self._cond:
                if name in self._pending:
                    self._pending.discard(name)
                    self.failures.append(UploadFailure(name, local_dir, "upload worker is not running"))
                self._cond.notify_all()

    def resend_failed(self, why: str, retry_s: float | None = None) -> list[str]:
        """Send every failed upload whose snapshot is still there again; the names sent."""
        with self._cond:
            again = [f for f in self.failures if f.local_path.is_dir() and f.name not in self._pending]
            self.failures = [f for f in self.failures if f not in again]
        if again:
            names = [f.name for f in again]
            logger.warning("Re-sending %d upload(s) that failed (%s): %s", len(names), why, ", ".join(names))
            self.resent += names
        for f in again:
            self.submit(f.name, f.local_path, retry_s=retry_s)
        return [f.name for f in again]

    def resend_pending(self, output_dir: Path) -> list[str]:
        """Snapshots an earlier launch left under ``output_dir/sync-pending/`` (it could not upload them): sent
        now, each dropped without an upload when it is committed already. Says so; returns the names."""
        with self._cond:
            known = set(self._pending)
        left = [p for p in pending_snapshots(output_dir) if p.name not in known]
        if left:
            logger.warning(
                "Found %d checkpoint(s) not uploaded by an earlier launch in %s: sending %s",
                len(left), Path(output_dir) / PENDING_DIR, ", ".join(p.name for p in left),
            )  # fmt: skip
        for p in left:
            self.submit(p.name, p, if_missing=True)
        return [p.name for p in left]

    def settle(self, total_s: float | None = None) -> list[UploadFailure]:
        """At the end of training: wait for every upload, and send failed ones again until they are committed
        or ``total_s`` (``QA_S3_RETRY_S``) has passed since this call. Returns what still failed."""
        deadline = time.monotonic() + (retry_seconds() if total_s is None else total_s)
        self.wait()
        while self.failures and (left := deadline - time.monotonic()) > 0:
            if not self.resend_failed(f"end of training; retrying for up to {left:.0f}s", retry_s=left):
                break  # nothing left that could be sent (a snapshot is gone)
            self.wait()
        return list(self.failures)

    def wait_for(self, name: str) -> None:
        """Until ``name`` is not being uploaded: its snapshot must not be replaced under the worker (a rerun's
        old ``checkpoint-N`` may still be on its way when training saves a new one of that name)."""
        with self._cond:
            self._cond.wait_for(lambda: name not in self._pending)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every submitted upload finished (committed or failed); False if ``timeout`` ran out."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._pending, timeout=timeout)

    def bytes_per_second(self) -> float | None:
        """Upload throughput observed so far (bytes over seconds of the commits), None before the first."""
        total_b = sum(b for b, _ in self.transfers)
        total_s = sum(s for _, s in self.transfers)
        return total_b / total_s if total_b and total_s > 0 else None

    def pending_bytes(self) -> int:
        """Bytes of the snapshots still waiting for (or in) upload: a new upload queues behind them."""
        with self._cond:
            paths = [self._paths[n] for n in self._pending if n in self._paths]
        return sum(dir_bytes(p) for p in paths)

    def close(self) -> None:
        self.wait()
        try:
            assert self._proc.stdin is not None
            self._proc.stdin.close()
        except OSError:
            pass
        self._reader.join(timeout=60)


def _worker_env() -> dict[str, str]:
    """The worker must import this very package, installed or not."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env


class S3SyncCallback(TrainerCallback):
    """On each save (world rank 0 only) snapshot ``checkpoint-<step>`` and queue its upload.

    In a multi-node group (``uploader.group``) the local-rank-0 process of every node snapshots and uploads its
    node's part (``qa_train.sync.group``); ``before_save(name)`` (world rank 0) removes what an earlier launch
    left of that checkpoint before the save's collectives, so that every part found later is this save's."""

    def __init__(self, uploader: BackgroundUploader, before_save: Any = None) -> None:
        self.uploader = uploader
        self.before_save = before_save

    def _uploads(self, args: Any, state: Any) -> bool:
        if self.uploader.group is not None:
            return int(getattr(args, "local_process_index", 0)) == 0
        return bool(state.is_world_process_zero)

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        """A rerun or relaunch on the same disk: what an earlier launch left pending goes first."""
        if self._uploads(args, state):
            self.uploader.resend_pending(Path(args.output_dir))
        return control

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if control.should_save and self.before_save is not None and state.is_world_process_zero:
            name = f"checkpoint-{state.global_step}"
            try:
                self.before_save(name)
            except Exception as exc:  # noqa: BLE001 - node 0 then fails this commit rather than the run
                logger.warning("Cannot clear earlier parts of %s before saving it: %s", name, exc)
        return control

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if not self._uploads(args, state):
            return control
        name = f"checkpoint-{state.global_step}"
        ckpt = Path(args.output_dir) / name
        if not ckpt.is_dir():  # report at finish() rather than crash the training loop
            error = f"expected the Trainer's checkpoint at {ckpt}, found nothing"
            logger.error("Cannot upload %s: %s", name, error)
            self.uploader.failures.append(UploadFailure(name, ckpt, error))
            return control
        if state.best_model_checkpoint:
            self.uploader.protect = {Path(state.best_model_checkpoint).name}
        self.uploader.wait_for(name)
        if self.uploader.group is not None:
            from .group import snapshot_part

            pending = snapshot_part(ckpt, Path(args.output_dir) / PENDING_DIR / name, self.uploader.group)
        else:
            pending = snapshot(ckpt, Path(args.output_dir) / PENDING_DIR / name)
        logger.info("Queued upload of %s to %s", name, self.uploader.run.child(name).uri)
        self.uploader.submit(name, pending)
        group = self.uploader.group
        if group is not None and group.node_rank > 0 and args.save_total_limit:
            from .group import prune_local_checkpoints

            prune_local_checkpoints(Path(args.output_dir), int(args.save_total_limit), self.uploader.protect)
        return control
