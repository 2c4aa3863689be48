"""Pick the checkpoint to resume from: newest committed remote one, unless a newer complete local one exists."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .remote import CHECKPOINT_RE, committed_checkpoints
from .storage import S3Location, SyncError
from .transfer import pull_directory

logger = logging.getLogger("qa_train.sync")
TRAINER_STATE = "trainer_state.json"  # the Trainer writes it last: a checkpoint without it was cut mid-save


@dataclass(frozen=True)
class ResumePoint:
    local_dir: str  # what Trainer.train(resume_from_checkpoint=…) gets
    source: str  # s3 URI or local path, for train_summary.json


def newest_local(output_dir: Path) -> tuple[int, Path] | None:
    best: tuple[int, Path] | None = None
    if not output_dir.is_dir():
        return None
    for child in output_dir.iterdir():
        m = CHECKPOINT_RE.match(child.name)
        if m and child.is_dir() and (child / TRAINER_STATE).is_file():
            step = int(m.group(1))
            if best is None or step > best[0]:
                best = (step, child)
    return best


def download_checkpoint(
    client: Any, src: S3Location, output_dir: Path, *, endpoint_url: str | None = None, progress: bool = True
) -> Path:
    name = src.prefix.rsplit("/", 1)[-1]
    if not CHECKPOINT_RE.match(name):
        raise SyncError(f"{src.uri} is not a checkpoint-<step> folder")
    dest = output_dir / name
    pull_directory(client, src, dest, progress=progress, endpoint_url=endpoint_url)
    if not (dest / TRAINER_STATE).is_file():
        raise SyncError(f"{src.uri} has no {TRAINER_STATE}: not a Trainer checkpoint")
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
            local_dir = download_checkpoint(
                client, src, output_dir, endpoint_url=endpoint_url, progress=progress
            )
        except SyncError as exc:
            logger.error("Cannot resume from %s: %s", candidate.uri, exc)
            errors.append(f"{candidate.name}: {exc}")
            continue
        return ResumePoint(str(local_dir), candidate.uri)
    raise SyncError(f"no usable checkpoint under {run.uri if run else '?'}: " + "; ".join(errors))
