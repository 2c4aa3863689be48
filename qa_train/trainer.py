"""Trainer subclass: token-weighted eval loss and a count of the real tokens trained on.

The stock Trainer averages per-batch mean losses, so a packed run (few long rows) and an unpacked run (many
short rows) report different eval losses for the same data. Summing token losses and dividing by the token
count makes the number independent of how samples are batched.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers import Trainer

from qa_train.data.tokenize import IGNORE_INDEX


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
