"""``train_summary.json``: what a finished training stage says about itself, written beside the final model.

Why typed: the trainer wrote it as a dict and the report, sync and eval read keys by name; a field renamed on
one side read as missing on the other. Both sides now build and parse this one class.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from qa_train.contract.report import ReportError

TRAIN_SUMMARY_NAME = "train_summary.json"
Mode = Literal["full", "lora", "qlora"]


@dataclass
class TrainSummary:
    """One training stage's outcome. ``train_loss`` None: training finished on resume (nothing left to do)."""

    model: str
    mode: Mode
    packing: bool = False
    num_samples: int = 0
    num_packs: int | None = None
    lower_bound_packs: int | None = None
    packing_efficiency: float | None = None
    train_tokens: int = 0
    tokens_per_second: float | None = None
    train_loss: float | None = None
    eval_loss: float | None = None
    eval_tokens: int | None = None
    global_step: int = 0
    world_size: int = 1  # data-parallel ranks that trained (every node's)
    resumed_from: str | None = None  # the checkpoint's URI or path this run resumed from
    tokenized_from: str | None = None  # local | remote | built
    inputs: dict[str, Any] | None = None  # each data/model input's fingerprint (qa_train.fingerprint)
    restarted_data: dict[str, Any] | None = None  # --restart_data: what changed and was removed (from step 0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str) + "\n"

    @classmethod
    def from_dict(cls, doc: dict[str, Any], source: str = TRAIN_SUMMARY_NAME) -> TrainSummary:
        """Unknown keys are dropped (a newer trainer's summary still parses); a missing model or mode, or a
        mode that is none of full/lora/qlora, raises ``ReportError`` naming the source."""
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in doc.items() if k in known}
        missing = [k for k in ("model", "mode") if k not in data]
        if missing:
            raise ReportError(f"{source}: not a train summary: missing {', '.join(missing)}")
        if data["mode"] not in ("full", "lora", "qlora"):
            raise ReportError(f"{source}: mode must be full, lora or qlora (got {data['mode']!r})")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str | bytes, source: str = TRAIN_SUMMARY_NAME) -> TrainSummary:
        try:
            doc = json.loads(text)
        except ValueError as e:
            raise ReportError(f"{source}: not a train summary: {e}") from None
        if not isinstance(doc, dict):
            raise ReportError(f"{source}: not a train summary: not a JSON object")
        return cls.from_dict(doc, source)
