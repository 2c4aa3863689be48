"""Command-line arguments of ``python -m qa_train train``.

Every flag of the original README's commands parses unchanged (HfArgumentParser dataclasses); a few
spellings that older transformers accepted are rewritten before parsing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from transformers import HfArgumentParser
from transformers import TrainingArguments as HfTrainingArguments

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
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments, SyncArguments))
    model_args, data_args, training_args, sync_args = parser.parse_args_into_dataclasses(args=argv)
    # HF defaults do_train to False; the original script always trained. Train unless told otherwise.
    if not any(a == "--do_train" or a.startswith("--do_train=") for a in argv):
        training_args.do_train = True
    if data_args.validation_path and not any(a.startswith("--do_eval") for a in argv):
        training_args.do_eval = True
    training_args.remove_unused_columns = False
    return model_args, data_args, training_args, sync_args
