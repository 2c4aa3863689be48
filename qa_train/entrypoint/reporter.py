"""The run report's lifecycle (``report.json`` locally and in storage) and restoring committed outputs."""

from __future__ import annotations

import os
import shutil
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from qa_train.contract import ENV_BACKEND, REPORT_NAME, RunLayout, RunReport, RunState, StageResult
from qa_train.fsutil import atomic_write_text
from qa_train.nodes import NodeEnv
from qa_train.spec import JobSpec
from qa_train.storage import RunStore


def instance_id(env: dict[str, str] | os._Environ[str] | None = None) -> str:
    env = os.environ if env is None else env
    return env.get("CONTAINER_ID") or env.get("RUNPOD_POD_ID") or env.get("HOSTNAME") or socket.gethostname()


class Reporter:
    """Keeps ``report.json`` current: locally (atomic rename) always, in object storage (one PUT) with sync.

    A storage hiccup while writing the report is a warning, never a failed run: the stages themselves fail
    when storage is really gone. Thread-safe (the committed-step watcher writes from its own thread).
    """

    def __init__(
        self,
        job: JobSpec,
        run_dir: Path,
        env: dict[str, str] | os._Environ[str] | None = None,
        node: NodeEnv | None = None,
    ):
        env = os.environ if env is None else env
        # a multi-node group: node 0 owns the shared report.json; another node keeps its report local and
        # writes only its train outcome (qa_train.node_status) for node 0 to read
        self.node = node
        self.shared = node is None or node.node_rank == 0
        self.local_path = run_dir / REPORT_NAME
        self.store = (
            RunStore(RunLayout.of(job.sync.target, job.run_name), job.sync.endpoint_url) if job.sync else None
        )
        self._lock = threading.RLock()
        self._warned: set[str] = set()
        self._stop_watch = threading.Event()
        self._watcher: threading.Thread | None = None
        # run before the final report.json is published: the controller destroys the instance once it reads
        # a final report, so anything uploaded after that (the HTML run report) could be cut off
        self.before_final: Callable[[], None] | None = None
        prev = self._previous()
        self.report = RunReport(
            run_name=job.run_name,
            instance_id=instance_id(env),
            backend=env.get(ENV_BACKEND) or None,
            launch=prev.launch + 1 if prev else 1,
            last_committed_step=prev.last_committed_step if prev else None,
            inputs=prev.inputs if prev else None,
        )
        # train's input fingerprints (qa_train.fingerprint) and its checkpoints still waiting for upload
        self._train_dir = Path(job.train_output_dir())
        if node is not None:
            from qa_train.node_status import group_fields

            self.report.group = group_fields(node)
        self._train_started: float | None = None
        self.write()

    def _warn_once(self, what: str, exc: BaseException) -> None:
        if what not in self._warned:
            self._warned.add(what)
            print(f"[run] warning: {what}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)

    def _previous(self) -> RunReport | None:
        found: list[RunReport] = []
        if self.store is not None:
            try:
                if (r := self.store.read_report()) is not None:
                    found.append(r)
            except Exception as e:  # noqa: BLE001 - unreadable or unreachable: count from the local copy
                self._warn_once(f"cannot read the previous report {self.store.layout.report}", e)
        try:
            found.append(RunReport.from_json(self.local_path.read_text(), str(self.local_path)))
        except (OSError, ValueError):
            pass
        return max(found, key=lambda r: r.launch) if found else None

    def write(self, upload: bool = True) -> None:
        with self._lock:
            self.report.updated_at = time.time()
            text = self.report.to_json()
            try:
                atomic_write_text(self.local_path, text)
            except OSError as e:
                self._warn_once(f"cannot write {self.local_path}", e)
            if upload and self.shared and self.store is not None:
                try:
                    self.store.put_text(REPORT_NAME, text)
                except Exception as e:  # noqa: BLE001 - see the class docstring
                    self._warn_once(f"cannot write {self.store.layout.report}", e)

    def committed(self) -> set[str]:
        """Folders an earlier launch committed (empty without sync or when storage cannot be listed)."""
        if self.store is None:
            return set()
        try:
            return self.store.committed()
        except Exception as e:  # noqa: BLE001 - then every stage runs again (train resumes from storage)
            self._warn_once(f"cannot list {self.store.layout.root}; no stage is skipped", e)
            return set()

    def refresh_inputs(self) -> None:
        """The report carries the input fingerprints train recorded (``output_dir/inputs.json``)."""
        from qa_train.fingerprint import read_local_record

        inputs = read_local_record(self._train_dir) if (self._train_dir / "inputs.json").is_file() else None
        with self._lock:
            if inputs is not None and inputs != self.report.inputs:
                self.report.inputs = inputs
                self.write()

    def refresh_step(self) -> None:
        self.refresh_inputs()
        if self.store is None:
            return
        try:
            step = self.store.committed_step()
        except Exception as e:  # noqa: BLE001 - a stale step is fine; the next check tries again
            self._warn_once("cannot list committed checkpoints", e)
            return
        with self._lock:
            if step is not None and step != self.report.last_committed_step:
                self.report.last_committed_step = step
                self.write()

    def stage_started(self, name: str) -> StageResult:
        with self._lock:
            result = StageResult(name, started_at=time.time())
            if name == "train":
                self._train_started = result.started_at
            self.report.stages.append(result)
            self.write()
        return result

    def stage_ended(self, result: StageResult, code: int, seconds: float, skipped: bool = False) -> None:
        with self._lock:
            result.exit_code, result.seconds, result.skipped = code, seconds, skipped
        if result.name == "train" and self.node is not None and not skipped:
            self.node_outcome(code)
        self.refresh_step()
        self.write()

    def watch(self, interval: float) -> None:
        """Rewrite the report after every checkpoint commit, in a daemon thread until ``unwatch``: train's
        upload worker removes a checkpoint's snapshot from ``sync-pending/`` once it is committed, so a snapshot
        that leaves (a local listing, every second) refreshes the committed step from storage; every
        ``interval`` s it is refreshed anyway."""
        if self.store is None or interval <= 0:
            return
        from qa_train.sync.worker import PENDING_DIR

        self._stop_watch.clear()
        pending = self._train_dir / PENDING_DIR

        def snapshots() -> set[str]:
            try:
                return set(os.listdir(pending))
            except OSError:
                return set()

        def loop() -> None:
            seen, last = snapshots(), time.monotonic()
            while not self._stop_watch.wait(min(1.0, interval)):
                now = snapshots()
                committed, seen = seen - now, now
                if committed or time.monotonic() - last >= interval:
                    self.refresh_step()
                    last = time.monotonic()

        self._watcher = threading.Thread(target=loop, name="report-step", daemon=True)
        self._watcher.start()

    def unwatch(self) -> None:
        self._stop_watch.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
            self._watcher = None

    def node_outcome(self, code: int) -> None:
        """After the train stage of a multi-node group: another node writes its exit code for node 0; node 0
        records every node's (waiting up to ``QA_NODE_STATUS_WAIT_S``, default 60, for them when training
        failed — a node that succeeded wrote its status before its ranks' peers could end) in ``group``."""
        from qa_train.node_status import failed_nodes, read_statuses, status_name, status_text

        node = self.node
        if node is None or self.store is None:
            return
        if node.node_rank > 0:
            try:
                self.store.put_text(
                    status_name(node.node_rank), status_text(node.node_rank, code, self.report.instance_id)
                )
            except Exception as e:  # noqa: BLE001 - node 0 then reports this node's outcome as unknown
                self._warn_once(f"cannot write {status_name(node.node_rank)}", e)
            return
        wait = float(os.environ.get("QA_NODE_STATUS_WAIT_S") or 60) if code != 0 else 10.0
        statuses = read_statuses(self.store.get_text, node.nnodes, self._train_started or 0.0, code, wait)
        with self._lock:
            group = dict(self.report.group or {})
            group["nodes"], group["failed_nodes"] = statuses, failed_nodes(statuses)
            self.report.group = group

    def flush_uploads(self) -> None:
        """Checkpoints still only on this disk (uploads that failed) are sent before the final report, for up
        to ``QA_S3_RETRY_S``; meanwhile the report says "uploads pending" and until when, so the controller
        keeps the instance that holds the only copies."""
        from qa_train.storage import retry_seconds
        from qa_train.sync.worker import flush_pending, pending_uploads

        names = pending_uploads(self._train_dir) if self.store is not None else []
        if not names or self.store is None:
            return
        total = retry_seconds()
        with self._lock:
            self.report.uploads_pending, self.report.uploads_until = names, time.time() + total
        self.write()
        print(f"[run] uploads pending: {', '.join(names)}; retrying for up to {total:.0f}s", file=sys.stderr,
              flush=True)  # fmt: skip
        left = flush_pending(self._train_dir, self.store.location(), self.store.endpoint_url, total_s=total)
        with self._lock:
            self.report.uploads_pending = left
            if not left:
                self.report.uploads_until = None
        if left:
            print(f"[run] uploads still pending after {total:.0f}s: {', '.join(left)} (kept in {self._train_dir})",
                  file=sys.stderr, flush=True)  # fmt: skip
        self.refresh_step()

    def finish(self, ok: bool, error: str | None) -> None:
        with self._lock:
            self.report.state = RunState.SUCCEEDED if ok else RunState.FAILED
            self.report.error = error
        if self.before_final is not None:
            self.write(upload=False)  # the local report.json already says how it ended, for before_final
            try:
                self.before_final()
            except Exception as e:  # noqa: BLE001 - the final report must be published whatever happens here
                self._warn_once("before the final report", e)
        self.write()

    def interrupted(self, code: int) -> None:
        """A signal (docker stop, preemption): the report stays ``running`` so the controller may relaunch."""
        self.refresh_step()  # the stage's SIGTERM save was committed before it exited: last_committed_step
        with self._lock:
            self.report.error = f"interrupted (exit {code}); state left running for the controller to decide"
        self.write()

    def verified(self, done: set[str], outputs: list[str]) -> set[str]:
        """``done`` minus the stage outputs whose files do not match their manifest (size and sha256): such a
        stage runs again (train resumes from the last good checkpoint) instead of being skipped, with a warning.
        Storage that cannot be read now also runs the stage again."""
        if self.store is None:
            return done
        from qa_train.storage import S3Location
        from qa_train.sync.manifest import verify_remote

        good = set(done)
        for name in [o for o in outputs if o in done]:
            loc = S3Location.parse(self.store.layout.child(name))
            try:
                problem = verify_remote(self.store.client, loc.bucket, loc.prefix, loc.uri)
            except Exception as e:  # noqa: BLE001 - unverifiable: redo the stage rather than trust it
                problem = f"cannot verify: {type(e).__name__}: {e}"
            if problem is not None:
                good.discard(name)
                print(f"[run] warning: {name}/ is committed but corrupt ({problem}); making it again (train "
                      "resumes from the last good checkpoint)", file=sys.stderr, flush=True)  # fmt: skip
        return good


def restore(store: RunStore, folder: str, local: Path) -> None:
    """Pull a committed folder (e.g. final/) into ``local`` (kept files of the same name are replaced)."""
    from qa_train.storage import make_client
    from qa_train.sync.transfer import pull_directory

    tmp = local.parent / f".restore-{local.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    client = make_client(store.endpoint_url)
    pull_directory(
        client,
        store.location(folder),
        tmp,
        progress=False,
        endpoint_url=store.endpoint_url,
    )
    local.mkdir(parents=True, exist_ok=True)
    for entry in tmp.iterdir():
        target = local / entry.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(entry, target)
    tmp.rmdir()
