"""Checkpoint sync to S3-compatible object storage and resume (interface used by ``qa_train.train``).

PLACEHOLDER until the sync issue lands: only the no-sync path works.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class SyncArguments:
    sync_to: str | None = field(default=None, metadata={"help": "s3://bucket/prefix to sync checkpoints to"})
    resume: str | None = field(
        default=None, metadata={"help": "auto | never | <checkpoint path or s3 uri>; auto when --sync_to is set"}
    )
    s3_endpoint_url: str | None = field(default=None, metadata={"help": "S3 endpoint (else AWS_ENDPOINT_URL)"})


@dataclass
class SyncSession:
    callbacks: list[Any] = field(default_factory=list)
    resume_from: str | None = None  # local checkpoint dir for Trainer.train(resume_from_checkpoint=…)
    resumed_from: str | None = None  # what train_summary.json records

    def finish(self, output_dir: Path, summary: dict[str, Any]) -> None:
        return None


def start_sync(sync_args: SyncArguments, training_args: Any) -> SyncSession:
    if sync_args.sync_to:
        raise NotImplementedError("--sync_to is not implemented yet")
    resume = sync_args.resume
    if resume and resume not in ("auto", "never"):
        return SyncSession(resume_from=resume, resumed_from=resume)
    return SyncSession()
