"""Live training metrics ``metrics.json``: written by the trainer (qa_train/metrics.py), read by ``status``,
``watch`` and ``report``."""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from qa_train.contract.layout import METRICS_NAME
from qa_train.contract.report import ReportError

# -- live metrics: written by the trainer (qa_train/metrics.py), read by ``status`` / ``watch`` / ``report`` --

METRICS_VERSION = 1
POINT_KEYS = ("step", "t", "loss", "lr", "tokens_per_second", "eval_loss")


@dataclass
class RunMetrics:
    """Where training is, rewritten whole by rank 0 every few seconds (locally) / ~15 s (object storage).

    ``history``: points ``{step, t, loss, lr, tokens_per_second, eval_loss}`` (any may be None but step and t),
    bounded and thinned by the writer; ``segments``: one ``{start_step, started_at}`` per training start, so a
    plot can mark where a preempted run resumed. ``tokens_per_second`` counts non-padding tokens of all ranks
    over the last logging window. Times are Unix seconds.
    """

    run_name: str
    step: int = 0
    max_steps: int | None = None
    epoch: float | None = None
    train_loss: float | None = None
    eval_loss: float | None = None
    learning_rate: float | None = None
    tokens_per_second: float | None = None
    gpu_memory_gb: float | None = None  # peak allocated on rank 0's device
    gpu_memory_total_gb: float | None = None
    started_at: float = field(default_factory=time.time)  # this training start
    updated_at: float = field(default_factory=time.time)
    finished: bool = False  # training ended (the final save may still be running)
    history: list[dict[str, Any]] = field(default_factory=list)
    segments: list[dict[str, Any]] = field(default_factory=list)
    version: int = METRICS_VERSION

    def to_json(self) -> str:
        return json.dumps(_finite(asdict(self)), separators=(",", ":"), allow_nan=False) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes, source: str = METRICS_NAME) -> RunMetrics:
        """Parse metrics; unknown keys dropped (a newer container), malformed → ``ReportError`` naming source."""
        try:
            doc = json.loads(text)
            if not isinstance(doc, dict) or "run_name" not in doc:
                raise ValueError("not a JSON object with run_name")
            known = {k: v for k, v in doc.items() if k in cls.__dataclass_fields__}
            known["history"] = [p for p in known.get("history") or [] if isinstance(p, dict) and "step" in p]
            known["segments"] = [s for s in known.get("segments") or [] if isinstance(s, dict)]
            return cls(**known)
        except (ValueError, TypeError) as e:
            raise ReportError(f"{source}: not a metrics file: {e}") from None

    def eta_s(self, now: float | None = None, window: int = 20) -> float | None:
        """Seconds left at the pace of the last ``window`` points of the current segment (None: unknown)."""
        if not self.max_steps or self.step >= self.max_steps:
            return 0.0 if self.max_steps and self.step >= self.max_steps else None
        start = self.segments[-1].get("start_step", 0) if self.segments else 0
        pts = [p for p in self.history if p.get("step", 0) >= start and p.get("t")][-window:]
        if len(pts) >= 2 and pts[-1]["step"] > pts[0]["step"] and pts[-1]["t"] > pts[0]["t"]:
            rate = (pts[-1]["step"] - pts[0]["step"]) / (pts[-1]["t"] - pts[0]["t"])
        elif self.step > start and self.updated_at > self.started_at:
            rate = (self.step - start) / (self.updated_at - self.started_at)
        else:
            return None
        return (self.max_steps - self.step) / rate


def _finite(value: Any) -> Any:
    """NaN / inf → None (strict JSON: a diverged loss must not make the file unreadable elsewhere)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
