"""Checkpoint sync to S3-compatible object storage, and automatic resume (the hook ``qa_train.train`` calls).

Remote layout under ``--sync_to s3://bucket/prefix``::

    <prefix>/<run_name>/checkpoint-<step>/…  + _manifest.json (written last = committed)
    <prefix>/<run_name>/final/…              final model + train_summary.json
    <prefix>/<run_name>/merged/, eval/       pushed by merge / eval through ``upload_directory``
    <prefix>/<run_name>/tokenized/<key>/     tokenized data (``tokenized_cache``), reused by relaunches
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qa_train.storage import (
    RetryPolicy,
    S3Location,
    StorageAccessError,
    StorageError,
    check_access,
    describe_error,
    make_client,
    resolve_endpoint,
    retrying,
)

__all__ = [
    "StorageAccessError",
    "SyncArguments",
    "StorageError",
    "SyncSession",
    "run_name_for",
    "start_sync",
    "upload_directory",
]
logger = logging.getLogger("qa_train.sync")


@dataclass
class SyncArguments:
    sync_to: str | None = field(default=None, metadata={"help": "s3://bucket/prefix to sync checkpoints to"})
    resume: str | None = field(
        default=None,
        metadata={"help": "auto | never | <checkpoint path or s3 uri>; auto when --sync_to is set"},
    )
    s3_endpoint_url: str | None = field(
        default=None, metadata={"help": "S3 endpoint (else AWS_ENDPOINT_URL)"}
    )
    s3_max_attempts: int = field(
        default=6, metadata={"help": "botocore attempts per S3 request (adaptive retry mode)"}
    )
    sync_concurrency: int = field(default=10, metadata={"help": "parallel parts/files per checkpoint upload"})
    sync_max_mbps: float = field(
        default=0,
        metadata={"help": "cap background upload at N MB/s (0: no cap), to spare a CPU-bound trainer"},
    )


def run_name_for(training_args: Any) -> str:
    """``--run_name`` when given explicitly, else the output_dir's basename (HF may default run_name to it)."""
    out = str(training_args.output_dir).rstrip("/")
    explicit = getattr(training_args, "run_name", None)
    if explicit and explicit.rstrip("/") != out:
        name = explicit
    else:
        name = Path(out).resolve().name
    name = name.strip().strip("/").replace("/", "-")
    if not name:
        raise StorageError("cannot derive a run name: pass --run_name")
    return name


@dataclass
class SyncSession:
    callbacks: list[Any] = field(default_factory=list)
    resume_from: str | None = None  # local checkpoint dir for Trainer.train(resume_from_checkpoint=…)
    resumed_from: str | None = None  # what train_summary.json records
    run: S3Location | None = None
    client: Any = None
    endpoint_url: str | None = None
    uploader: Any = None  # BackgroundUploader on world rank 0 when syncing
    tb: Any = None  # TensorBoardPusher on world rank 0 when syncing with --report_to tensorboard
    inputs: Any = None  # qa_train.fingerprint.InputBinding when start_sync was given the input paths
    group: Any = None  # qa_train.sync.group.NodeGroup on a multi-node group (each node uploads its part)

    def finish_part(self) -> None:
        """A node's local rank 0 (not world rank 0) of a group: wait for its parts' uploads; raise naming any
        that failed (node 0 cannot commit those checkpoints)."""
        if self.uploader is None:
            return
        failed = self.uploader.settle()
        self.uploader.close()
        if failed:
            raise StorageError(f"{len(failed)} checkpoint part upload(s) to {self.run.uri if self.run else '?'} "
                               "failed: " + "; ".join(f"{f.name}: {f.error}" for f in failed))  # fmt: skip

    def committed_final(self) -> Any:
        """The run's ``final/`` folder when it is committed and every file matches its manifest's size and
        sha256, else None (a corrupt one with a warning: the caller uploads the final model again); always
        None without a sync target."""
        if self.client is None or self.run is None:
            return None
        from .manifest import verify_remote
        from .remote import list_run

        final = next((f for f in list_run(self.client, self.run) if f.name == "final" and f.committed), None)
        if final is None:
            return None
        loc = self.run.child("final")
        problem = verify_remote(self.client, loc.bucket, loc.prefix, loc.uri)
        if problem is not None:
            logger.warning(
                "%s is committed but corrupt (%s): uploading the final model again", loc.uri, problem
            )
            return None
        return final

    def tokenized_cache(self, progress: bool = True) -> Any:
        """The run's remote tokenized-data cache (``RemoteTokenCache``), None without a sync target."""
        if self.client is None or self.run is None:
            return None
        from .tokenized import RemoteTokenCache

        return RemoteTokenCache(self.client, self.run, self.endpoint_url, progress=progress)

    def push_tb(self, tb_dir: Path | None) -> str | None:
        """The last TensorBoard push (``tb_push``: files that changed since the pushes during training), after
        the writers closed. Never fails the run: they are for people; a failed upload is a warning. Returns
        the URI when anything is there."""
        if self.client is None or self.run is None or tb_dir is None:
            return None
        from qa_train.contract import TB

        from .tb_push import TensorBoardPusher

        pusher = self.tb
        if pusher is None or pusher.tb_dir != Path(tb_dir):
            pusher = TensorBoardPusher(self.client, self.run.child(TB), Path(tb_dir))
        pusher.close()
        try:
            pusher.push()
        except Exception as exc:  # StorageError or a botocore error: keep training's outcome as it is
            logger.warning(
                "TensorBoard logs not uploaded to %s (kept at %s): %s", pusher.dest.uri, tb_dir, exc
            )
            return None
        if not pusher.files_sent:
            return None
        logger.info("Uploaded TensorBoard logs to %s", pusher.dest.uri)
        return pusher.dest.uri

    def finish(
        self,
        output_dir: Path,
        summary: dict[str, Any],
        *,
        upload_final: bool = True,
        tb_dir: Path | None = None,
    ) -> None:
        """Wait for checkpoint uploads, push ``final/`` (+ train_summary.json) and the TensorBoard logs
        (``tb_dir``, a warning when that fails); raise naming any failed model upload.

        ``upload_final=False``: an earlier launch committed ``final/`` already (verified by the caller)."""
        if self.uploader is None:
            return
        self.push_tb(tb_dir)
        from .transfer import push_directory

        self.uploader.settle()  # failed uploads sent again, for up to QA_S3_RETRY_S
        problems = [
            f"{f.name} (local copy kept at {f.local_path}): {f.error}" for f in self.uploader.failures
        ]
        final = self.run.child("final")
        summary_bytes = (json.dumps(summary, indent=2, default=str) + "\n").encode()
        try:
            if upload_final:
                retrying(  # through an outage, for up to QA_S3_RETRY_S
                    lambda: push_directory(
                        self.client,
                        Path(output_dir),
                        final,
                        progress=self.uploader.progress,
                        concurrency=self.uploader.concurrency,
                        endpoint_url=self.endpoint_url,
                        extra_files={"train_summary.json": summary_bytes},
                        top_level_only=True,
                    ),
                    RetryPolicy.uploads(),
                    f"upload of {final.uri}",
                )
                logger.info("Uploaded final model and train_summary.json to %s", final.uri)
        except StorageError as exc:
            problems.append(f"final (local copy at {output_dir}): {exc}")
        self.uploader.close()
        if problems:
            raise StorageError(f"{len(problems)} upload(s) to {self.run.uri} failed: " + "; ".join(problems))


def _is_world_zero(training_args: Any) -> bool:
    return int(getattr(training_args, "process_index", 0)) == 0


def _main_first(training_args: Any, desc: str) -> Any:
    ctx = getattr(training_args, "main_process_first", None)
    if ctx is None:
        import contextlib

        return contextlib.nullcontext()
    return ctx(local=True, desc=desc)


def start_sync(
    sync_args: SyncArguments,
    training_args: Any,
    inputs: dict[str, str | None] | None = None,
    restart_data: bool = False,
) -> SyncSession:
    """Check storage access, bind the run to its inputs, pick the resume point, and build the upload
    callback — before any training.

    ``inputs`` (flag → local path): fingerprinted and compared with the run's record before any checkpoint is
    resumed (``qa_train.fingerprint``); a difference refuses (``InputsChanged``) unless ``restart_data``,
    which removes the old checkpoints and starts from step 0."""
    resume = sync_args.resume or ("auto" if sync_args.sync_to else None)
    session = SyncSession()
    if sync_args.sync_to:
        base = S3Location.parse(sync_args.sync_to)
        session.endpoint_url = sync_args.s3_endpoint_url
        session.client = make_client(sync_args.s3_endpoint_url, max_attempts=sync_args.s3_max_attempts)
        check_access(session.client, base, sync_args.s3_endpoint_url)
        session.run = base.child(run_name_for(training_args))
        from .group import current_group

        session.group = current_group()
        node_lead = session.group is not None and int(getattr(training_args, "local_process_index", 0)) == 0
        if _is_world_zero(training_args) or node_lead:
            from .callback import BackgroundUploader, S3SyncCallback

            session.uploader = BackgroundUploader(
                session.run,
                endpoint_url=sync_args.s3_endpoint_url,
                max_attempts=sync_args.s3_max_attempts,
                keep=training_args.save_total_limit,
                concurrency=sync_args.sync_concurrency,
                max_mbps=sync_args.sync_max_mbps,
                group=session.group,
            )
            before_save = None
            if session.group is not None and _is_world_zero(training_args):
                from .group import uncommit

                client, run = session.client, session.run
                before_save = lambda name: uncommit(client, run.child(name))  # noqa: E731
            session.callbacks.append(S3SyncCallback(session.uploader, before_save))
            tb_dir = getattr(training_args, "logging_dir", None)
            if tb_dir and "tensorboard" in (training_args.report_to or []) and _is_world_zero(training_args):
                from qa_train.contract import TB

                from .tb_push import TensorBoardPusher, TensorBoardSyncCallback

                session.tb = TensorBoardPusher(session.client, session.run.child(TB), Path(tb_dir))
                session.callbacks.append(TensorBoardSyncCallback(session.tb))
    if inputs is not None or resume not in (None, "never"):
        from qa_train.storage import request_errors

        with _main_first(training_args, "inputs and resume"):  # rank 0 records/removes first
            try:
                if inputs is not None:
                    resume = _bind_inputs(session, inputs, resume, restart_data, training_args)
                if resume not in (None, "never"):
                    _resolve_resume(session, resume, sync_args, training_args)
            except request_errors() as exc:
                where = session.run or S3Location.parse(str(resume))
                raise StorageAccessError(
                    f"resume failed: {describe_error(exc, where, session.endpoint_url)}"
                ) from exc
    if session.run is not None:
        logger.info(
            "Syncing checkpoints to %s (endpoint %s)",
            session.run.uri,
            resolve_endpoint(sync_args.s3_endpoint_url) or "AWS default",
        )
    return session


def _bind_inputs(
    session: SyncSession, inputs: dict[str, str | None], resume: str | None, restart: bool, training_args: Any
) -> str | None:
    """Fingerprint the inputs and check them against the run's record; the resume mode to use next
    (``never`` after --restart_data removed the old checkpoints)."""
    from qa_train.fingerprint import current_inputs

    from .resume import bind_inputs

    session.inputs = bind_inputs(
        session.client,
        session.run,
        Path(training_args.output_dir),
        current_inputs(inputs),
        resume=resume,
        restart=restart,
        write=_is_world_zero(training_args),
    )
    return "never" if session.inputs.restarted is not None else resume


def _resolve_resume(session: SyncSession, resume: str, sync_args: SyncArguments, training_args: Any) -> None:
    output_dir = Path(training_args.output_dir)
    progress = bool(getattr(training_args, "should_log", True)) and not getattr(
        training_args, "disable_tqdm", False
    )
    if resume == "auto" and session.group is not None and session.client is not None and session.run:
        from .group import resume_point

        got = resume_point(
            session.client, session.run, output_dir, session.group, endpoint_url=session.endpoint_url
        )
        if got is not None:
            session.resume_from, session.resumed_from = got
    elif resume == "auto":
        from .resume import find_resume_point

        point = find_resume_point(
            session.client, session.run, output_dir, endpoint_url=session.endpoint_url, progress=progress
        )
        if point is not None:
            session.resume_from, session.resumed_from = point.local_dir, point.source
    elif resume.startswith("s3://"):
        from .resume import download_checkpoint, incomplete_reason

        src = S3Location.parse(resume)
        dest = output_dir / src.prefix.rsplit("/", 1)[-1]
        if not dest.is_dir() or incomplete_reason(dest) is not None:
            if dest.exists():  # cut mid-save or mid-copy: the committed remote copy replaces it
                logger.warning("Replacing incomplete local %s (%s)", dest, incomplete_reason(dest))
                import shutil

                shutil.rmtree(dest)
            client = session.client or make_client(sync_args.s3_endpoint_url, sync_args.s3_max_attempts)
            logger.info("Resuming from %s (%s)", dest.name, src.uri)
            dest = download_checkpoint(client, src, output_dir, endpoint_url=sync_args.s3_endpoint_url)
        session.resume_from, session.resumed_from = str(dest), src.uri
    else:
        path = Path(resume)
        if not path.is_dir():
            raise StorageError(
                f"--resume {resume!r}: no such checkpoint folder (use auto, never, a path or s3://…)"
            )
        from .resume import TRAINER_STATE, incomplete_reason

        why = incomplete_reason(path)
        if why is not None:
            try:  # a checkpoint written elsewhere may lack our marker; a cut-off one has no readable state
                json.loads((path / TRAINER_STATE).read_text())
            except (OSError, ValueError):
                raise StorageError(
                    f"--resume {resume}: an incomplete checkpoint ({why}); pick another"
                ) from None
            logger.warning("--resume %s: %s; its %s reads, resuming from it", resume, why, TRAINER_STATE)
        session.resume_from = session.resumed_from = str(path)


def upload_directory(
    sync_to: str, run_name: str, subdir: str, local_dir: str | Path, endpoint_url: str | None = None
) -> str:
    """Push ``local_dir`` (e.g. merged/ or eval/) to ``<sync_to>/<run_name>/<subdir>/`` with a manifest."""
    from .transfer import push_directory

    base = S3Location.parse(sync_to)
    client = make_client(endpoint_url)
    check_access(client, base, endpoint_url)
    dest = base.child(run_name, subdir)
    retrying(
        lambda: push_directory(client, Path(local_dir), dest, endpoint_url=endpoint_url),
        RetryPolicy.uploads(),
        f"upload of {dest.uri}",
    )
    logger.info("Uploaded %s to %s", local_dir, dest.uri)
    return dest.uri
