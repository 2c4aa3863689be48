"""Command-line arguments of ``python -m qa_train train``.

Every flag of the original README's commands parses unchanged (HfArgumentParser dataclasses); a few
spellings that older transformers accepted are rewritten before parsing.
"""

from __future__ import annotations

import difflib
import logging
import math
from dataclasses import dataclass, field
from typing import Any

from transformers import HfArgumentParser
from transformers import TrainingArguments as HfTrainingArguments

from qa_train.fsutil import UsageError, check_number, one_line
from qa_train.sync import SyncArguments

logger = logging.getLogger(__name__)

# Old spelling → current spelling.
FLAG_ALIASES = {"--evaluation_strategy": "--eval_strategy"}


@dataclass
class ModelArguments:
    model_name_or_path: str = field(metadata={"help": "Base model: hub id or local folder"})
    model_type: str | None = field(
        default=None, metadata={"help": "mistral | llama (any HF causal LM works; detected from the config)"}
    )
    attn_implementation: str | None = field(
        default=None,
        metadata={
            "help": "flash_attention_2 | sdpa_varlen | sdpa | eager (default: FA2 on GPU when installed, else "
            "sdpa_varlen when packing, else sdpa)"
        },
    )


@dataclass
class DataArguments:
    train_path: str | None = field(
        default=None, metadata={"help": "Training records: JSON list, JSONL or datasets folder"}
    )
    validation_path: str | None = field(default=None, metadata={"help": "Validation records (same formats)"})
    packing: bool = field(default=False, metadata={"help": "Pack samples into rows of model_max_length"})
    packing_strategy: str = field(default="bfd", metadata={"help": "bfd | ffd | next_fit"})
    padding: str = field(
        default="longest",
        metadata={"help": "Without packing: longest (dynamic) | max_length (as the original)"},
    )
    truncation: bool = field(default=True, metadata={"help": "Truncate samples longer than model_max_length"})
    skip_invalid_records: bool = field(
        default=False, metadata={"help": "Skip malformed records (counted) instead of failing"}
    )
    data_cache_dir: str | None = field(
        default=None, metadata={"help": "Tokenization cache (default ~/.cache/qa_train)"}
    )
    restart_data: bool = field(
        default=False,
        metadata={
            "help": "The data changed since this run started (a resume would mix the two and is refused): "
            "remove the run's old checkpoints and train from step 0 on the current data (train_summary.json "
            "says so). Nothing happens when the inputs are the recorded ones"
        },
    )


@dataclass
class TrainingArguments(HfTrainingArguments):
    model_max_length: int = field(default=4096, metadata={"help": "Maximum sequence (and pack) length"})
    use_lora: bool = field(default=False, metadata={"help": "Train LoRA adapters instead of the whole model"})
    qlora: bool = field(
        default=False, metadata={"help": "With --use_lora: load the base in 4-bit nf4 (QLoRA)"}
    )
    lora_r: int = field(default=16, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=64, metadata={"help": "LoRA alpha"})
    lora_dropout: float = field(default=0.1, metadata={"help": "LoRA dropout"})
    new_token_lr: float | None = field(
        default=None,
        metadata={
            "help": "LoRA/QLoRA: learning rate of the <|bof|>/<|eof|>/<|eot|> embedding (and untied lm_head) "
            "rows, trained as their own parameter group (default: 10 x --learning_rate; Adam moves a weight by "
            "about lr per step, and a new row must move O(1) to win a softmax in a short run)"
        },
    )
    new_token_init: str = field(
        default="text",
        metadata={
            "help": "text: new token rows start at the (norm-rescaled) mean of the embeddings of a describing "
            "string ('begin function call', …); mean: at the mean of all rows (the former behaviour)"
        },
    )
    logging_dir: str | None = field(
        default=None,
        metadata={
            "help": "TensorBoard event files (--report_to tensorboard; default <output_dir>/tb), synced under "
            "<run>/tb/ at every save with --sync_to. transformers 5 dropped this flag for the "
            "TENSORBOARD_LOGGING_DIR variable: train sets that from it"
        },
    )
    save_every_minutes: float = field(
        default=0,
        metadata={
            "help": "Also save a checkpoint when M minutes passed since the last one (0: off), on top "
            "of --save_strategy: bounds the work a preemption loses"
        },
    )
    sigterm_grace_s: float = field(
        default=25,
        metadata={
            "help": "Seconds between SIGTERM and SIGKILL (docker stop -t; vast/RunPod give more): on "
            "SIGTERM the current step ends, then a checkpoint is saved and committed if that fits"
        },
    )
    sigterm_min_age_s: float = field(
        default=0,
        metadata={
            "help": "On SIGTERM, save only when the last checkpoint is older than this many seconds (0: any "
            "step since the last save is worth the grace, which is otherwise unused)"
        },
    )

    def __post_init__(self) -> None:
        # Ours first: the Trainer's own checks name fewer flags, and some nonsense it accepts silently
        # (--model_max_length -5 cut the last 5 tokens of every sample, negative epochs trained 0 steps).
        check_training_ranges(self)
        super().__post_init__()


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


def _steps_ok(x: Any) -> bool:
    """HF step intervals: a whole number of steps >= 1, or a fraction of the run in (0, 1)."""
    return _finite(x) and x > 0 and (x < 1 or float(x).is_integer())


def check_training_ranges(a: Any) -> None:
    """Every number a user can get wrong, with the flag named (UsageError); ``a`` is our TrainingArguments."""
    check_number("--model_max_length", a.model_max_length, a.model_max_length > 0, "> 0")
    for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        check_number(f"--{name}", getattr(a, name), getattr(a, name) >= 1, ">= 1")
    if a.eval_accumulation_steps is not None:
        check_number(
            "--eval_accumulation_steps", a.eval_accumulation_steps, a.eval_accumulation_steps >= 1, ">= 1"
        )
    check_number("--learning_rate", a.learning_rate, _finite(a.learning_rate) and a.learning_rate > 0, "> 0")
    epochs = a.num_train_epochs
    check_number("--num_train_epochs", epochs, _finite(epochs) and epochs >= 0, "> 0")
    check_number(
        "--max_steps",
        a.max_steps,
        a.max_steps == -1 or a.max_steps >= 1,
        "-1 (train --num_train_epochs) or >= 1",
    )
    for name in ("logging_steps", "save_steps", "eval_steps"):
        value = getattr(a, name)
        if value is not None:
            check_number(
                f"--{name}", value, _steps_ok(value), "a whole number of steps >= 1 or a fraction in (0, 1)"
            )
    check_number("--warmup_steps", a.warmup_steps, _finite(a.warmup_steps) and a.warmup_steps >= 0, ">= 0")
    if getattr(a, "warmup_ratio", None) is not None:
        check_number(
            "--warmup_ratio",
            a.warmup_ratio,
            _finite(a.warmup_ratio) and 0 <= a.warmup_ratio <= 1,
            "in [0, 1]",
        )
    check_number("--weight_decay", a.weight_decay, _finite(a.weight_decay) and a.weight_decay >= 0, ">= 0")
    if a.max_grad_norm is not None:
        check_number(
            "--max_grad_norm", a.max_grad_norm, _finite(a.max_grad_norm) and a.max_grad_norm >= 0, ">= 0"
        )
    if a.save_total_limit is not None:
        check_number("--save_total_limit", a.save_total_limit, a.save_total_limit >= 1, ">= 1")
    check_number("--dataloader_num_workers", a.dataloader_num_workers, a.dataloader_num_workers >= 0, ">= 0")
    check_number("--lora_r", a.lora_r, a.lora_r >= 1, ">= 1")
    check_number("--lora_alpha", a.lora_alpha, _finite(a.lora_alpha) and a.lora_alpha > 0, "> 0")
    check_number(
        "--save_every_minutes",
        a.save_every_minutes,
        _finite(a.save_every_minutes) and a.save_every_minutes >= 0,
        ">= 0 (0: off)",
    )
    check_number(
        "--sigterm_grace_s", a.sigterm_grace_s, _finite(a.sigterm_grace_s) and a.sigterm_grace_s >= 0, ">= 0"
    )
    check_number(
        "--sigterm_min_age_s",
        a.sigterm_min_age_s,
        _finite(a.sigterm_min_age_s) and a.sigterm_min_age_s >= 0,
        ">= 0",
    )
    if a.new_token_lr is not None:
        check_number("--new_token_lr", a.new_token_lr, _finite(a.new_token_lr) and a.new_token_lr > 0, "> 0")
    from qa_train.modeling import NEW_TOKEN_INITS

    if a.new_token_init not in NEW_TOKEN_INITS:
        raise UsageError(f"--new_token_init must be {' or '.join(NEW_TOKEN_INITS)}, got {a.new_token_init!r}")
    dropout = a.lora_dropout
    check_number("--lora_dropout", dropout, _finite(dropout) and 0 <= dropout < 1, ">= 0 and < 1")


def _check_sync_ranges(s: Any) -> None:
    check_number("--s3_max_attempts", s.s3_max_attempts, s.s3_max_attempts >= 1, ">= 1")
    check_number("--sync_concurrency", s.sync_concurrency, s.sync_concurrency >= 1, ">= 1")
    check_number(
        "--sync_max_mbps", s.sync_max_mbps, _finite(s.sync_max_mbps) and s.sync_max_mbps >= 0, ">= 0"
    )


class _Parser(HfArgumentParser):
    """Mistakes argparse finds (bad type, missing value) become one line, not a screen of usage."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        raise UsageError(message.removeprefix("argument "))


def _unknown_flags_error(parser: HfArgumentParser, unknown: list[str]) -> UsageError:
    flags = [u.split("=", 1)[0] for u in unknown if u.startswith("-")]
    if not flags:
        return UsageError(f"unexpected argument(s): {' '.join(unknown)} (every value needs its --flag)")
    known = list(parser._option_string_actions)  # noqa: SLF001 - argparse has no public list of its flags
    hints = []
    for flag in flags:
        close = difflib.get_close_matches(flag, known, n=1, cutoff=0.75)
        hints.append(f"{flag} (did you mean {close[0]}?)" if close else flag)
    return UsageError(f"unknown flag(s) for train: {', '.join(hints)}")


def normalize_argv(argv: list[str]) -> list[str]:
    out = []
    for arg in argv:
        head, sep, tail = arg.partition("=")
        if head in FLAG_ALIASES:
            arg = FLAG_ALIASES[head] + sep + tail
        out.append(arg)
    return out


def _drop_unavailable_tf32(argv: list[str]) -> list[str]:
    """``--tf32 True`` is an Ampere-only switch; on other hardware warn and drop it instead of failing."""
    import torch

    if torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8:
        return argv
    out, skip = [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg == "--tf32":
            if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                skip = True
            logger.warning("--tf32 ignored: no Ampere-or-newer GPU here")
            continue
        if arg.startswith("--tf32="):
            logger.warning("--tf32 ignored: no Ampere-or-newer GPU here")
            continue
        out.append(arg)
    return out


def _cpu_when_no_gpu(argv: list[str]) -> list[str]:
    """Without CUDA, say so to the Trainer (it otherwise refuses ``--bf16 True``)."""
    import torch

    if torch.cuda.is_available() or any(a.startswith("--use_cpu") for a in argv):
        return argv
    return [*argv, "--use_cpu", "True"]


def parse_train_args(
    argv: list[str],
) -> tuple[ModelArguments, DataArguments, TrainingArguments, SyncArguments]:
    argv = _drop_unavailable_tf32(normalize_argv(argv))
    argv = _cpu_when_no_gpu(argv)
    parser = _Parser((ModelArguments, DataArguments, TrainingArguments, SyncArguments), allow_abbrev=False)
    _, unknown = parser.parse_known_args(argv)
    if unknown:  # before any dataclass is built: a typo must not start anything
        raise _unknown_flags_error(parser, unknown)
    try:
        model_args, data_args, training_args, sync_args = parser.parse_args_into_dataclasses(args=argv)
    except UsageError:
        raise
    except (ValueError, TypeError) as exc:  # the Trainer's own checks in TrainingArguments.__post_init__
        raise UsageError(one_line(exc)) from None
    _check_sync_ranges(sync_args)
    if not any(a == "--output_dir" or a.startswith("--output_dir=") for a in argv):
        raise UsageError("--output_dir is required (where the model, checkpoints and train_summary.json go)")
    # HF defaults do_train to False; the original script always trained. Train unless told otherwise.
    if not any(a == "--do_train" or a.startswith("--do_train=") for a in argv):
        training_args.do_train = True
    if data_args.validation_path and not any(a.startswith("--do_eval") for a in argv):
        training_args.do_eval = True
    if training_args.do_train and training_args.max_steps == -1:
        epochs = training_args.num_train_epochs
        check_number("--num_train_epochs", epochs, epochs > 0, "> 0 (or set --max_steps)")
    training_args.remove_unused_columns = False
    return model_args, data_args, training_args, sync_args
