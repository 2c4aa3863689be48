"""TensorBoard event files → ``<run>/tb/`` while training runs, not only at its end.

Why during training: a preempted launch never reaches the end, and its curves are what a user looks at to
decide whether the relaunch is worth paying for. Each checkpoint save wakes a background thread that uploads
the event files that grew since the last push (small files, but S3 round trips the training loop should not
wait for). Files are uploaded one by one and never deleted: each launch writes event files of its own name
(time, host, pid), so a relaunch adds its curves to the earlier launches' ones.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from qa_train.storage import S3Location, upload_file

logger = logging.getLogger("qa_train.sync")


class TensorBoardPusher:
    """Uploads new or grown files under ``tb_dir`` to ``dest``; ``push`` raises, the thread only warns."""

    def __init__(self, client: Any, dest: S3Location, tb_dir: Path) -> None:
        self.client = client
        self.dest = dest
        self.tb_dir = Path(tb_dir)
        self._sent: dict[Path, tuple[int, int]] = {}  # file → (size, mtime_ns) at its last upload
        self._lock = threading.Lock()  # one push at a time (the thread's and the final one)
        self._wake = threading.Event()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._warned = False

    @property
    def files_sent(self) -> int:
        return len(self._sent)

    def changed(self) -> list[Path]:
        if not self.tb_dir.is_dir():
            return []
        files = sorted(p for p in self.tb_dir.rglob("*") if p.is_file())
        return [f for f in files if self._sent.get(f) != _stamp(f)]

    def push(self) -> int:
        """Upload what changed since the last push; the number of files uploaded."""
        with self._lock:
            done = 0
            for f in self.changed():
                stamp = _stamp(f)  # taken before the upload: a file growing meanwhile goes again next time
                upload_file(
                    self.client, f, self.dest.bucket, self.dest.key(f.relative_to(self.tb_dir).as_posix())
                )
                self._sent[f] = stamp
                done += 1
            return done

    def request(self) -> None:
        """Push soon, from the background thread (started on the first request)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="tb-push", daemon=True)
            self._thread.start()
        self._wake.set()

    def close(self) -> None:
        """Serve what was requested, then stop the thread."""
        if self._thread is not None:
            self._closing = True
            self._wake.set()
            self._thread.join(timeout=120)
            self._thread = None

    def _loop(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            try:  # a request pending when close() came is still served
                n = self.push()
            except Exception as exc:  # noqa: BLE001 - curves are for people; the final push reports again
                if not self._warned:
                    self._warned = True
                    logger.warning("TensorBoard logs not uploaded to %s yet: %s", self.dest.uri, exc)
            else:
                if n:
                    logger.info("Uploaded %d TensorBoard file(s) to %s", n, self.dest.uri)
            if self._closing:
                return


class TensorBoardSyncCallback(TrainerCallback):
    """After each checkpoint save on world rank 0: push the TensorBoard files (the writer flushes on each log)."""

    def __init__(self, pusher: TensorBoardPusher) -> None:
        self.pusher = pusher

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if state.is_world_process_zero:
            self.pusher.request()
        return control


def _stamp(f: Path) -> tuple[int, int]:
    st = f.stat()
    return st.st_size, st.st_mtime_ns
