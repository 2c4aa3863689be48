"""The allowed range of every training number, written once.

The job spec's pydantic fields take their constraints from here (``spec_bounds``) and ``python -m qa_train
train`` checks its parsed arguments against the same table (``check_bounds``): a bound changed here changes
both, so a spec value and the flag of the same name are refused at the same edge. Standard library only (the
launcher imports the spec).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


class BoundError(ValueError):
    """A number outside its range; the message names the flag, the rule and the value."""


@dataclass(frozen=True)
class Bound:
    """``ge``/``gt``/``le``/``lt`` as pydantic spells them. ``unset``: the flag's "not set" value (the spec says
    so with null instead), accepted on the command line only and meaning ``unset_means``. ``steps``: an HF
    step interval, which on the command line may also be a fraction of the run in (0, 1)."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    unset: float | None = None
    unset_means: str = "off"
    steps: bool = False

    def pydantic(self) -> dict[str, float]:
        """The keyword arguments of ``pydantic.Field`` for this range."""
        return {
            k: v
            for k, v in (("ge", self.ge), ("gt", self.gt), ("le", self.le), ("lt", self.lt))
            if v is not None
        }

    def holds(self, value: Any) -> bool:
        """``value`` is a finite number inside the range (an argument value, so ``unset`` and step fractions
        count)."""
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return False
        if self.unset is not None and value == self.unset:
            return True
        if self.steps and 0 < value < 1:
            return True
        if self.steps and not float(value).is_integer():
            return False
        return (
            (self.ge is None or value >= self.ge)
            and (self.gt is None or value > self.gt)
            and (self.le is None or value <= self.le)
            and (self.lt is None or value < self.lt)
        )

    def rule(self) -> str:
        """The range in words, as the error line says it: ``> 0 and < 1``, ``-1 (…) or >= 1``."""
        ops = ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt))
        text = " and ".join(f"{op} {_num(v)}" for op, v in ops if v is not None)
        if self.steps:
            text = f"a whole number of steps {text} or a fraction in (0, 1)"
        if self.unset is None:
            return text
        if self.unset == self.gt:  # "> 0, or 0 for off" reads best as one range
            return f">= {_num(self.unset)} ({_num(self.unset)}: {self.unset_means})"
        return f"{_num(self.unset)} ({self.unset_means}) or {text}"


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else str(v)


# Field name (the argument dataclasses' name; the spec uses the same one) -> its range.
BOUNDS: dict[str, Bound] = {
    "model_max_length": Bound(gt=0),
    "per_device_train_batch_size": Bound(ge=1),
    "per_device_eval_batch_size": Bound(ge=1),
    "gradient_accumulation_steps": Bound(ge=1),
    "eval_accumulation_steps": Bound(ge=1),
    "learning_rate": Bound(gt=0, lt=1),
    "num_train_epochs": Bound(gt=0),
    "max_steps": Bound(ge=1, unset=-1, unset_means="train --num_train_epochs"),
    "logging_steps": Bound(ge=1, steps=True),
    "save_steps": Bound(ge=1, steps=True),
    "eval_steps": Bound(ge=1, steps=True),
    "warmup_steps": Bound(ge=0),
    "weight_decay": Bound(ge=0),
    "max_grad_norm": Bound(ge=0),
    "save_total_limit": Bound(ge=1),
    "dataloader_num_workers": Bound(ge=0),
    "lora_r": Bound(ge=1),
    "lora_alpha": Bound(gt=0),
    "lora_dropout": Bound(ge=0, lt=1),
    "save_every_minutes": Bound(gt=0, unset=0),
    "sigterm_grace_s": Bound(ge=0),
    "sigterm_min_age_s": Bound(ge=0),
    "new_token_lr": Bound(gt=0),
    "s3_max_attempts": Bound(ge=1),
    "sync_concurrency": Bound(ge=1),
    "sync_max_mbps": Bound(ge=0),
}


def spec_bounds(name: str) -> dict[str, float]:
    """``Field(default, **spec_bounds("learning_rate"))``: the spec field's constraints from the table."""
    return BOUNDS[name].pydantic()


def check_bounds(args: Any) -> None:
    """Every field of ``args`` that the table names, when set (not None): ``BoundError("--name must be …
    (got v)")`` for the first one out of range."""
    for name, bound in BOUNDS.items():
        value = getattr(args, name, None)
        if value is not None and not bound.holds(value):
            raise BoundError(f"--{name} must be {bound.rule()} (got {value})")
