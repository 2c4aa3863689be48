"""Pick the checkpoint to resume from: newest committed remote one, unless a newer complete local one exists."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qa_train.storage import S3Location, StorageError

from .remote import CHECKPOINT_RE, committed_checkpoints
from .transfer import pull_directory
from .worker import HELD_RECORD, PENDING_DIR, hold_record, send_held_record

logger = logging.getLogger("qa_train.sync")
TRAINER_STATE = "trainer_state.json"  # the Trainer writes it last: a checkpoint without it was cut mid-save


@dataclass(frozen=True)
class ResumePoint:
    local_dir: str  # what Trainer.train(resume_from_checkpoint=…) gets
    source: str  # s3 URI or local path, for train_summary.json


def incomplete_reason(ckpt: Path) -> str | None:
    """Why a local checkpoint folder cannot be resumed from (None: complete).

    Complete means the completion marker (``qa_train.fsutil.MARKER``) is there: the CheckpointMarker callback
    writes it after the Trainer finished the folder, so a save cut off by a full disk or a kill (a 0-byte
    ``trainer_state.json``, missing weights) never has it."""
    from qa_train.fsutil import MARKER, read_marker

    state = ckpt / TRAINER_STATE
    size = state.stat().st_size if state.is_file() else None
    marked = read_marker(ckpt) is not None
    if marked and size:
        return None
    problems = [] if marked else [f"no {MARKER}"]
    problems.append(
        f"no {TRAINER_STATE}" if size is None else f"{TRAINER_STATE} is 0 bytes" if size == 0 else ""
    )
    return "; ".join(p for p in problems if p)


def newest_local(output_dir: Path) -> tuple[int, Path] | None:
    """The newest complete local checkpoint; each newer incomplete one is skipped with a warning."""
    found: list[tuple[int, Path]] = []
    if not output_dir.is_dir():
        return None
    for child in output_dir.iterdir():
        m = CHECKPOINT_RE.match(child.name)
        if m and child.is_dir():
            found.append((int(m.group(1)), child))
    for step, child in sorted(found, reverse=True):
        why = incomplete_reason(child)
        if why is None:
            return step, child
        logger.warning("Skipping incomplete local checkpoint %s (%s): not resuming from it", child, why)
    return None


def download_checkpoint(
    client: Any, src: S3Location, output_dir: Path, *, endpoint_url: str | None = None, progress: bool = True
) -> Path:
    name = src.prefix.rsplit("/", 1)[-1]
    if not CHECKPOINT_RE.match(name):
        raise StorageError(f"{src.uri} is not a checkpoint-<step> folder")
    dest = output_dir / name
    pull_directory(client, src, dest, progress=progress, endpoint_url=endpoint_url)
    if not (dest / TRAINER_STATE).is_file():
        raise StorageError(f"{src.uri} has no {TRAINER_STATE}: not a Trainer checkpoint")
    return dest


def find_resume_point(
    client: Any | None,
    run: S3Location | None,
    output_dir: Path,
    *,
    endpoint_url: str | None = None,
    progress: bool = True,
) -> ResumePoint | None:
    """``--resume auto``: newest of (local complete checkpoint, remote committed checkpoint); ties go local.

    A remote checkpoint that fails verification is reported loudly and the next older committed one is tried:
    one corrupt upload must not block every future restart of a spot job. All failing → one error naming each.
    """
    local = newest_local(output_dir)
    remote = committed_checkpoints(client, run) if client is not None and run is not None else []
    newest_remote = remote[-1] if remote else None
    if local and (newest_remote is None or local[0] >= (newest_remote.step or 0)):
        where = f", remote newest is {newest_remote.uri}" if newest_remote else ""
        logger.info("Resuming from %s (local%s)", local[1].name, where)
        return ResumePoint(str(local[1]), str(local[1]))
    if not remote:
        logger.info("No checkpoint to resume from%s: starting fresh", f" under {run.uri}" if run else "")
        return None
    assert client is not None
    errors = []
    for candidate in reversed(remote):
        if local and local[0] >= (candidate.step or 0):
            logger.warning("Resuming from %s (local) after newer remote checkpoints failed", local[1].name)
            return ResumePoint(str(local[1]), str(local[1]))
        dest = output_dir / candidate.name
        if dest.exists():  # an incomplete local copy (no trainer_state.json): the remote one replaces it
            logger.warning("Replacing incomplete local %s with the committed remote copy", dest)
            shutil.rmtree(dest)
        logger.info("Resuming from %s (%s)", candidate.name, candidate.uri)
        try:
            src = S3Location.parse(candidate.uri)
            from .group import check_node_count
            from .transfer import read_manifest

            check_node_count(read_manifest(client, src), None, candidate.uri)  # one node: saved by one node?
            local_dir = download_checkpoint(
                client, src, output_dir, endpoint_url=endpoint_url, progress=progress
            )
        except StorageError as exc:
            from .group import NodeCountError

            if isinstance(exc, NodeCountError):
                raise
            logger.error("Cannot resume from %s: %s", candidate.uri, exc)
            errors.append(f"{candidate.name}: {exc}")
            continue
        return ResumePoint(str(local_dir), candidate.uri)
    raise StorageError(f"no usable checkpoint under {run.uri if run else '?'}: " + "; ".join(errors))


def _read_remote_record(client: Any, run: S3Location) -> str | None:
    """``<run>/inputs.json``'s text, None when absent (botocore errors propagate: the caller names them)."""
    from qa_train.fingerprint import INPUTS_NAME
    from qa_train.storage import get_bytes

    body = get_bytes(client, run.bucket, run.key(INPUTS_NAME))
    return None if body is None else body.decode()


def _leftovers(client: Any | None, run: S3Location | None, output_dir: Path) -> list[str]:
    """Checkpoints a resume could take: local checkpoint-* folders, committed remote ones."""
    names = set()
    if output_dir.is_dir():
        names |= {c.name for c in output_dir.iterdir() if CHECKPOINT_RE.match(c.name) and c.is_dir()}
    if client is not None and run is not None:
        names |= {f.uri for f in committed_checkpoints(client, run)}
    return sorted(names)


def _remove_outputs(client: Any | None, run: S3Location | None, output_dir: Path) -> list[str]:
    """--restart_data: every checkpoint (remote first, then local) and the remote final/merged/eval of the old
    data go, so no later resume can pick them up. Returns what was removed."""
    from qa_train.contract import EVAL, FINAL, MERGED

    from .remote import delete_folder, list_run
    from .worker import PENDING_DIR

    removed = []
    if client is not None and run is not None:
        for f in list_run(client, run):
            if f.step is not None or f.name in (FINAL, MERGED, EVAL):
                delete_folder(client, run.child(f.name))
                removed.append(f.uri)
    if output_dir.is_dir():
        for child in sorted(output_dir.iterdir()):
            if child.is_dir() and (CHECKPOINT_RE.match(child.name) or child.name == PENDING_DIR):
                shutil.rmtree(child)
                removed.append(str(child))
    return removed


def bind_inputs(
    client: Any | None,
    run: S3Location | None,
    output_dir: Path,
    current: dict[str, Any],
    *,
    resume: str | None,
    restart: bool,
    write: bool,
) -> Any:
    """Compare the run's recorded input fingerprints with ``current`` before any checkpoint is resumed.

    Differing data inputs with a checkpoint to resume: ``InputsChanged`` (one line), nothing touched. With
    ``restart`` (--restart_data) the old checkpoints are removed instead and the caller trains from step 0.
    The record (``<run>/inputs.json`` and ``output_dir/inputs.json``) is written after any removal (``write``:
    world rank 0), so a launch cut off in between still sees the old record. Returns an ``InputBinding``."""
    from qa_train.fingerprint import (
        INPUTS_NAME,
        InputBinding,
        InputsChanged,
        changed_line,
        parse_record,
        read_local_record,
        record_document,
        warn_model_change,
        write_local_record,
    )

    binding = InputBinding(inputs=current)
    remote_found = False
    if client is not None and run is not None:
        text = _read_remote_record(client, run)
        if text is not None:
            binding.recorded = parse_record(text, run.child(INPUTS_NAME).uri)
            binding.source = run.child(INPUTS_NAME).uri
            remote_found = binding.recorded is not None
    if binding.recorded is None:
        binding.recorded = read_local_record(output_dir)
        binding.source = str(output_dir / INPUTS_NAME)
    warn_model_change(binding)
    changed = binding.changed
    if changed:
        # resume None (no --sync_to, no --resume): this launch starts from step 0 whatever is on disk
        leftovers = _leftovers(client, run, output_dir) if resume is not None else []
        if resume not in (None, "auto", "never"):
            leftovers.append(resume)  # an explicit checkpoint to resume
        if restart:
            removed = _remove_outputs(client, run, output_dir) if write else []
            recorded = binding.recorded or {}
            binding.restarted = {
                "changed": changed,
                "recorded": {f: recorded.get(f) for f in changed},
                "removed": removed,
            }
            logger.warning(
                "--restart_data: %s differ(s) from the record (%s); removed %d old checkpoint/output folder(s); "
                "training from step 0",
                ", ".join(changed),
                binding.source,
                len(removed),
            )
        elif leftovers:
            raise InputsChanged(changed_line(changed[0], binding.recorded or {}, current, binding.source))
        else:
            logger.warning(
                "%s differ(s) from the record (%s) but there is no checkpoint to resume: starting from step 0 "
                "and recording the new inputs",
                ", ".join(changed),
                binding.source,
            )
    elif restart and binding.recorded is not None:
        logger.info("--restart_data: the inputs are the recorded ones; nothing to restart")
    if write:
        recorded_before = binding.recorded

        def record() -> None:
            output_dir.mkdir(parents=True, exist_ok=True)
            local_ok = read_local_record(output_dir) == current
            if recorded_before is None or changed or not local_ok:
                write_local_record(output_dir, current)
            if client is not None and run is not None and (not remote_found or changed):
                import json

                body = json.dumps(record_document(current), indent=1, sort_keys=True).encode()
                send_record(client, run, output_dir, body)

        # Written once the inputs have been read and found usable (``InputBinding.record``): a launch refused
        # for bad data must leave nothing behind, not a record of that data.
        binding.pending = record
    return binding


def send_record(client: Any, run: S3Location, output_dir: Path, body: bytes) -> None:
    """Put the run's input record; while storage is down, hold it under ``sync-pending/`` instead: the upload
    worker sends it before it commits any checkpoint (a checkpoint never lands unbound to its data), and a
    storage outage at this moment is handled like one during training, not as a failed launch."""
    from qa_train.fingerprint import INPUTS_NAME
    from qa_train.storage import is_transient, scrub

    hold_record(output_dir, body)  # first, so a kill between the two leaves the record to send again
    try:
        send_held_record(client, run, output_dir)
    except Exception as exc:
        if not is_transient(exc):  # refused (access, bucket): the launch fails on it; nothing held back
            (output_dir / PENDING_DIR / HELD_RECORD).unlink(missing_ok=True)
            raise
        logger.warning(
            "%s: storage unavailable (%s); the record is sent before the first checkpoint is committed",
            run.child(INPUTS_NAME).uri, scrub(str(exc))[:300],
        )  # fmt: skip
