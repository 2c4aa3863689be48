"""Upload every saved checkpoint in a background thread so that training never waits on the network."""

from __future__ import annotations

import logging
import os
import queue
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from .remote import apply_retention
from .storage import S3Location, SyncError
from .transfer import push_directory

logger = logging.getLogger("qa_train.sync")
PENDING_DIR = "sync-pending"  # hard-linked snapshots waiting for upload (survive the Trainer's own rotation)


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
    if dest.exists():
        shutil.rmtree(dest)

    def link(s: str, d: str) -> None:
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    shutil.copytree(src, dest, copy_function=link)
    return dest


class BackgroundUploader:
    """One worker thread, one checkpoint at a time (each upload is itself parallel multipart)."""

    def __init__(
        self,
        client: Any,
        run: S3Location,
        *,
        endpoint_url: str | None = None,
        keep: int | None = None,
        concurrency: int = 10,
        progress: bool = False,
    ) -> None:
        self.client = client
        self.run = run
        self.endpoint_url = endpoint_url
        self.keep = keep
        self.concurrency = concurrency
        self.progress = progress
        self.failures: list[UploadFailure] = []
        self.committed: list[str] = []
        self.protect: set[str] = set()
        self._queue: queue.Queue[tuple[str, Path] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="qa-train-s3-sync", daemon=True)
        self._thread.start()

    def submit(self, name: str, local_dir: Path) -> None:
        self._queue.put((name, local_dir))

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                self._upload(*item)
            finally:
                self._queue.task_done()

    def _upload(self, name: str, local_dir: Path) -> None:
        dest = self.run.child(name)
        start = time.monotonic()
        try:
            manifest = push_directory(
                self.client,
                local_dir,
                dest,
                progress=self.progress,
                concurrency=self.concurrency,
                endpoint_url=self.endpoint_url,
            )
        except Exception as exc:  # keep the snapshot; report at the end of training
            logger.error("Upload of %s to %s failed: %s", name, dest.uri, exc)
            self.failures.append(UploadFailure(name, local_dir, str(exc)))
            return
        secs = max(time.monotonic() - start, 1e-9)
        logger.info(
            "Committed %s (%d files, %.1f MB in %.1fs, %.1f MB/s)",
            dest.uri,
            len(manifest.files),
            manifest.total_bytes / 1e6,
            secs,
            manifest.total_bytes / 1e6 / secs,
        )
        self.committed.append(name)
        if local_dir.parent.name == PENDING_DIR:
            shutil.rmtree(local_dir, ignore_errors=True)
        try:
            apply_retention(self.client, self.run, self.keep, self.protect)
        except Exception as exc:  # retention is housekeeping: never fail the run for it
            logger.warning("Remote retention under %s failed: %s", self.run.uri, exc)

    def wait(self) -> None:
        """Block until every submitted upload finished (committed or failed)."""
        self._queue.join()

    def close(self) -> None:
        self.wait()
        self._queue.put(None)
        self._thread.join()


class S3SyncCallback(TrainerCallback):
    """On each save (world rank 0 only) snapshot ``checkpoint-<step>`` and queue its upload."""

    def __init__(self, uploader: BackgroundUploader) -> None:
        self.uploader = uploader

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if not state.is_world_process_zero:
            return control
        name = f"checkpoint-{state.global_step}"
        ckpt = Path(args.output_dir) / name
        if not ckpt.is_dir():
            raise SyncError(f"on_save: expected the Trainer's checkpoint at {ckpt}, found nothing")
        if state.best_model_checkpoint:
            self.uploader.protect = {Path(state.best_model_checkpoint).name}
        pending = snapshot(ckpt, Path(args.output_dir) / PENDING_DIR / name)
        logger.info("Queued upload of %s to %s", name, self.uploader.run.child(name).uri)
        self.uploader.submit(name, pending)
        return control
