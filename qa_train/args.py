"""Command-line arguments of ``python -m qa_train train``.

Every flag of the original README's commands parses unchanged (HfArgumentParser dataclasses); a few
spellings that older transformers accepted are rewritten before parsing.
"""

from __future__ import annotations

import difflib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import HfArgumentParser
from transformers import TrainingArguments as HfTrainingArguments

from qa_train.bounds import BoundError, check_bounds
from qa_train.fsutil import UsageError, one_line
from qa_train.sync import SyncArguments

logger = logging.getLogger(__name__)

# Old spelling → current spelling (a flag, or a key of an arguments JSON file).
FIELD_ALIASES = {"evaluation_strategy": "eval_strategy"}
FLAG_ALIASES = {f"--{old}": f"--{new}" for old, new in FIELD_ALIASES.items()}


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


def check_training_ranges(a: Any) -> None:
    """Every number a user can get wrong, with the flag named (UsageError), from the one table
    (``qa_train.bounds``) the job spec's fields are constrained by too; ``a`` is our TrainingArguments."""
    try:
        check_bounds(a)
    except BoundError as exc:
        raise UsageError(str(exc)) from None
    from qa_train.modeling import NEW_TOKEN_INITS

    if a.new_token_init not in NEW_TOKEN_INITS:
        raise UsageError(f"--new_token_init must be {' or '.join(NEW_TOKEN_INITS)}, got {a.new_token_init!r}")


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


def _has_ampere() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8


def _drop_unavailable_tf32(argv: list[str], config: dict[str, Any]) -> list[str]:
    """``tf32`` is an Ampere-only switch; on other hardware warn and drop it instead of failing."""
    if _has_ampere():
        return argv
    if config.pop("tf32", False):
        logger.warning("tf32 ignored: no Ampere-or-newer GPU here")
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


def read_config(argv: list[str]) -> tuple[dict[str, Any], list[str], str]:
    """``ARGS.json [--flag value …]``: the arguments file (``qa_train.train_config`` writes it from a job spec)
    and the flags after it, which override it (``--deepspeed``, a launcher's ``--local_rank``); a plain flag
    list has no file. Returns (values, flags, the file's name for messages)."""
    if not argv or argv[0].startswith("-") or not argv[0].endswith(".json"):
        return {}, argv, "train arguments"
    path = argv[0]
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the train arguments: {exc.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: not valid JSON: {one_line(exc)}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: the train arguments must be a JSON object, got {type(data).__name__}")
    return {FIELD_ALIASES.get(k, k): v for k, v in data.items()}, argv[1:], path


def _given(config: dict[str, Any], argv: list[str]) -> set[str]:
    """The argument names set by the file or a flag (HF's defaults differ from the original script's)."""
    return set(config) | {a[2:].split("=", 1)[0] for a in argv if a.startswith("--")}


def _apply_config(parser: HfArgumentParser, config: dict[str, Any], source: str) -> None:
    """The file's values become the parser's defaults: flags still override them, and one parse (with the
    dataclasses' own checks and ours) serves both."""
    dests = {a.dest for a in parser._actions}  # noqa: SLF001 - argparse has no public list of its actions
    unknown = sorted(set(config) - dests)
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, list(dests), n=1, cutoff=0.75)
            hints.append(f"{key} (did you mean {close[0]}?)" if close else key)
        raise UsageError(f"{source}: unknown key(s) for train: {', '.join(hints)}")
    for action in parser._actions:  # noqa: SLF001
        if action.dest in config:
            action.required = False
    parser.set_defaults(**config)


def parse_train_args(
    argv: list[str],
) -> tuple[ModelArguments, DataArguments, TrainingArguments, SyncArguments]:
    """``[ARGS.json] [--flag value …]`` into the four argument dataclasses, every range checked once."""
    config, argv, source = read_config(argv)
    argv = _drop_unavailable_tf32(normalize_argv(argv), config)
    given = _given(config, argv)
    if "use_cpu" not in given and not _cuda():  # say so to the Trainer (it otherwise refuses bf16)
        argv = [*argv, "--use_cpu", "True"]
    parser = _Parser((ModelArguments, DataArguments, TrainingArguments, SyncArguments), allow_abbrev=False)
    _apply_config(parser, config, source)
    _, unknown = parser.parse_known_args(argv)
    if unknown:  # before any dataclass is built: a typo must not start anything
        raise _unknown_flags_error(parser, unknown)
    try:
        model_args, data_args, training_args, sync_args = parser.parse_args_into_dataclasses(args=argv)
    except UsageError:
        raise
    except (ValueError, TypeError) as exc:  # the Trainer's own checks in TrainingArguments.__post_init__
        raise UsageError(one_line(exc)) from None
    try:
        check_bounds(sync_args)
    except BoundError as exc:
        raise UsageError(str(exc)) from None
    if "output_dir" not in given:
        raise UsageError("--output_dir is required (where the model, checkpoints and train_summary.json go)")
    # HF defaults do_train to False; the original script always trained. Train unless told otherwise.
    if "do_train" not in given:
        training_args.do_train = True
    if data_args.validation_path and "do_eval" not in given:
        training_args.do_eval = True
    training_args.remove_unused_columns = False
    return model_args, data_args, training_args, sync_args


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
