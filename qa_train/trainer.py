"""Trainer subclass: token-weighted eval loss and a count of the real tokens trained on.

The stock Trainer averages per-batch mean losses, so a packed run (few long rows) and an unpacked run (many
short rows) report different eval losses for the same data. Summing token losses and dividing by the token
count makes the number independent of how samples are batched.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from transformers import Trainer, TrainerCallback

from qa_train.data.tokenize import IGNORE_INDEX
from qa_train.sync.callback import dir_bytes

logger = logging.getLogger("qa_train.train")


NEW_TOKEN_PARAM = "trainable_tokens_delta"  # peft's name for the trained rows of trainable_token_indices
NEW_TOKEN_LR_FACTOR = 10.0  # --new_token_lr default: 10 x --learning_rate


def new_token_lr(args: Any) -> float:
    """``--new_token_lr``, by default ``NEW_TOKEN_LR_FACTOR`` x ``--learning_rate``."""
    lr = getattr(args, "new_token_lr", None)
    return float(lr) if lr is not None else NEW_TOKEN_LR_FACTOR * float(args.learning_rate)


def _all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        t = t.clone()
        torch.distributed.all_reduce(t)
    return t


class QATrainer(Trainer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.real_tokens_seen = 0
        self._eval_sums = torch.zeros(2, dtype=torch.float64)

    def training_step(
        self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None
    ) -> torch.Tensor:
        mask = inputs.get("attention_mask")
        self.real_tokens_seen += int(mask.sum()) if mask is not None else int(inputs["input_ids"].numel())
        return super().training_step(model, inputs, num_items_in_batch)

    def create_optimizer(self, model: Any = None) -> Any:
        """The stock optimizer, with the new-token rows (peft ``trainable_tokens_delta``) moved into their own
        group at ``--new_token_lr`` without weight decay: they start far from where they must end and have only
        a short run to get there, while the LoRA weights must stay gentle."""
        optimizer = super().create_optimizer(model)
        lr = new_token_lr(self.args)
        opt_model = self.model if model is None else model
        rows = [p for n, p in opt_model.named_parameters() if NEW_TOKEN_PARAM in n and p.requires_grad]
        if not rows or getattr(self.optimizer, "param_groups", None) is None:
            return optimizer
        moved = {id(p) for p in rows}
        for group in self.optimizer.param_groups:
            group["params"] = [p for p in group["params"] if id(p) not in moved]
        self.optimizer.param_groups[:] = [g for g in self.optimizer.param_groups if g["params"]]
        self.optimizer.add_param_group({"params": rows, "lr": lr, "weight_decay": 0.0})
        logger.info("new token rows: %d tensors in their own optimizer group at lr %g", len(rows), lr)
        return optimizer

    finished_on_resume = False

    def _run_epoch(self, *args: Any, **kwargs: Any) -> Any:
        """A run resumed from a checkpoint at or past the last step trains no further step.

        The stock loop runs one optimizer step before it first checks ``max_steps`` (resuming from
        checkpoint-6 of a 6-step run whose epoch is not a multiple of 6 steps ended at global_step 7: an extra
        step on a finished model), so the check goes before each epoch.
        """
        if self.state.max_steps > 0 and self.state.global_step >= self.state.max_steps:
            if not self.finished_on_resume:
                logger.info(
                    "Resumed at global step %d of %d: training is finished, going straight to the final save",
                    self.state.global_step,
                    self.state.max_steps,
                )
            self.finished_on_resume = True
            self.control.should_training_stop = True
            return None
        return super()._run_epoch(*args, **kwargs)

    def prediction_step(
        self, model: Any, inputs: dict[str, Any], prediction_loss_only: bool, ignore_keys: Any = None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        inputs = self._prepare_inputs(inputs)
        labels = inputs["labels"]
        model_inputs = {k: v for k, v in inputs.items() if k != "labels"}
        with torch.no_grad():
            logits = model(**model_inputs, use_cache=False).logits
        shift_logits = logits[:, :-1, :].reshape(-1, logits.shape[-1]).float()
        shift_labels = labels[:, 1:].reshape(-1)
        loss_sum = F.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX, reduction="sum")
        n = (shift_labels != IGNORE_INDEX).sum()
        self._eval_sums += torch.stack([loss_sum.detach().double().cpu(), n.double().cpu()])
        return (loss_sum / n.clamp(min=1)).detach(), None, None

    def evaluation_loop(
        self,
        dataloader: Any,
        description: str,
        prediction_loss_only: bool | None = None,
        ignore_keys: Any = None,
        metric_key_prefix: str = "eval",
    ) -> Any:
        self._eval_sums = torch.zeros(2, dtype=torch.float64)
        output = super().evaluation_loop(
            dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix
        )
        device = self.args.device if torch.distributed.is_initialized() else torch.device("cpu")
        sums = _all_reduce_sum(self._eval_sums.to(device)).cpu()
        if sums[1] > 0:
            output.metrics[f"{metric_key_prefix}_loss"] = float(sums[0] / sums[1])
            output.metrics[f"{metric_key_prefix}_tokens"] = int(sums[1])
        return output


# -- preemption: time-bounded checkpoints and a clean stop on SIGTERM -----------------------------------------

DEFAULT_SAVE_BYTES_PER_S = 200e6  # local disk write, before a save has been measured in this process
DEFAULT_UPLOAD_BYTES_PER_S = 20e6  # conservative (160 Mbit/s) until the sync worker has committed something
SIGTERM_MARGIN_S = 2.0  # exit handling after the commit (process teardown, report write by the parent)


def model_state_bytes(model: Any) -> int:
    """What a first checkpoint roughly weighs: the weights plus two fp32 Adam moments per trainable value
    (ZeRO-3 partitions report their full size in ``ds_numel``)."""
    total = 0
    for p in model.parameters():
        n = int(getattr(p, "ds_numel", 0) or p.numel())
        total += n * p.element_size()
        if p.requires_grad:
            total += n * 8
    return total


@dataclass
class SigtermOutcome:
    """What the trainer did with a SIGTERM (``qa_train.train`` prints it as the exit line)."""

    action: str  # save | skip | current
    step: int
    received_at: float
    last_step: int  # step of the newest checkpoint before the signal
    estimate_s: float = 0.0
    budget_s: float = 0.0
    age_s: float = 0.0


class PreemptionGuard(TrainerCallback):
    """``--save_every_minutes`` and SIGTERM handling, in one callback so a multi-rank run decides once.

    Time-bounded saves: ``control.should_save`` when M minutes passed since the last save (any strategy).
    SIGTERM: the signal handler only records the time; at the end of the current optimizer step the guard
    saves a checkpoint if the last one is older than ``min_age_s`` and the estimated save + upload time (last
    save's measured duration and size, the sync worker's observed throughput or a conservative default, plus
    uploads still queued) fits what is left of ``grace_s``; either way training stops there. With several
    ranks the decision is all-reduced / broadcast from rank 0 (every rank must take part in a ZeRO-3 save).
    """

    def __init__(
        self,
        *,
        save_every_minutes: float = 0,
        grace_s: float = 25,
        min_age_s: float = 0,
        uploader: Any = None,
        clock: Any = time.monotonic,
    ) -> None:
        self.interval_s = save_every_minutes * 60
        self.grace_s = grace_s
        self.min_age_s = min_age_s
        self.uploader = uploader
        self.clock = clock
        self.phase = "setup"  # setup | training | final
        self.term_at: float | None = None
        self.outcome: SigtermOutcome | None = None
        self.estimated_bytes = 0  # before any save: from the resumed checkpoint or the model's size
        self.last_save_at = clock()
        self.last_save_step = 0
        self.last_save_seconds: float | None = None
        self.last_save_bytes: int | None = None
        self._step_end_at: float | None = None
        self.timed_saves = 0

    # -- the signal side (main thread, between bytecodes) --
    def signal_received(self, signum: int) -> None:
        if self.term_at is None:
            self.term_at = self.clock()

    @property
    def stopping(self) -> bool:
        return self.outcome is not None

    # -- estimates --
    def estimate_save_s(self) -> tuple[float, int]:
        size = self.last_save_bytes or self.estimated_bytes
        if self.last_save_seconds is not None:
            save_s = self.last_save_seconds
        else:
            save_s = size / DEFAULT_SAVE_BYTES_PER_S
        upload_s = 0.0
        if self.uploader is not None:
            rate = self.uploader.bytes_per_second() or DEFAULT_UPLOAD_BYTES_PER_S
            upload_s = (size + self.uploader.pending_bytes()) / rate
        return save_s + upload_s, size

    def _decide(self, state: Any, control: Any) -> SigtermOutcome:
        now = self.clock()
        assert self.term_at is not None
        age_s = now - self.last_save_at
        budget = self.grace_s - (now - self.term_at) - SIGTERM_MARGIN_S
        base = {"step": state.global_step, "received_at": self.term_at, "last_step": self.last_save_step,
                "budget_s": budget, "age_s": age_s}  # fmt: skip
        if state.global_step == self.last_save_step or age_s < self.min_age_s:
            return SigtermOutcome("current", **base)
        estimate, _ = self.estimate_save_s()
        return SigtermOutcome("save" if estimate <= budget else "skip", estimate_s=estimate, **base)

    def _agree(self, args: Any, flags: list[float]) -> list[float]:
        """Element-wise max over ranks (no-op on one process)."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return flags
        t = torch.tensor(flags, dtype=torch.float64, device=args.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return [float(x) for x in t.tolist()]

    def _broadcast(self, outcome: SigtermOutcome | None) -> SigtermOutcome | None:
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return outcome
        box = [outcome]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    # -- callback events --
    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        self.phase = "training"
        self.last_save_at = self.clock()
        self.last_save_step = state.global_step
        return control

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        now = self.clock()
        due = bool(self.interval_s) and now - self.last_save_at >= self.interval_s
        due_f, term_f = self._agree(args, [float(due), float(self.term_at is not None)])
        if term_f and not self.stopping:
            if self.term_at is None:  # another rank got the signal first
                self.term_at = now
            outcome = self._decide(state, control) if state.is_world_process_zero else None
            self.outcome = self._broadcast(outcome)
            assert self.outcome is not None
            control.should_training_stop = True
            control.should_evaluate = False
            control.should_save = self.outcome.action == "save"
        elif due_f and not control.should_save:
            control.should_save = True
            self.timed_saves += 1
            logger.info(
                "save_every_minutes: %.1f min since the last save; saving", (now - self.last_save_at) / 60
            )
        self._step_end_at = now
        return control

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        now = self.clock()
        if self._step_end_at is not None:
            self.last_save_seconds = now - self._step_end_at
        ckpt = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if os.path.isdir(ckpt):
            self.last_save_bytes = dir_bytes(ckpt)
        self.last_save_at = now
        self.last_save_step = state.global_step
        return control

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if self.stopping:  # a save_strategy=epoch save of the step just saved (or deliberately not saved)
            control.should_save = False
            control.should_evaluate = False
        return control

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        self.phase = "final"
        return control
