"""The job spec's training configuration as ``python -m qa_train train``'s arguments, mapped once.

The spec is validated once (pydantic, ranges from ``qa_train.bounds``); this module turns a job and its plan
into ONE dict of argument-dataclass field names (``qa_train.args``: ModelArguments, DataArguments, our
TrainingArguments, SyncArguments) and writes it as a JSON file that ``python -m qa_train train ARGS.json``
reads with HfArgumentParser — the HF examples' convention. Every ``training:`` field passes through under its
own name, so a hyperparameter added to ``TrainingSpec`` reaches TrainingArguments with no further edit; only
LoRA's names and the plan's per-GPU choices are looked up below. Standard library + the spec: the container's ``run`` builds this without torch.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from qa_train.contract import TB
from qa_train.fsutil import atomic_write_text
from qa_train.spec import JobSpec, Plan

TRAIN_ARGS_NAME = "train_args.json"  # beside ds_config.json in the run folder

# lora.<spec name> -> argument name
LORA_RENAMED = {"r": "lora_r", "alpha": "lora_alpha", "dropout": "lora_dropout"}
# Decided per GPU by the launcher's plan (launch/render.py), which starts from the spec's values
FROM_PLAN = ("bf16", "tf32", "per_device_train_batch_size", "gradient_accumulation_steps")


def train_args(job: JobSpec, plan: Plan) -> dict[str, Any]:
    """The train stage's arguments: field name -> value (a None spec value is left out: the argument's own
    default then means the same, e.g. ``max_steps`` -1 or ``save_every_minutes`` 0)."""
    out = job.train_output_dir()
    args: dict[str, Any] = {
        "model_name_or_path": job.base_model(),
        "model_type": job.model.model_type,
        "train_path": job.data.train_path,
        "validation_path": job.data.validation_path,
        "packing": job.packing,
        "use_lora": job.use_lora,
        "qlora": job.qlora,
        "output_dir": out,
        "run_name": job.run_name,
    }
    # every training field under its own name (evaluation_strategy: the README's spelling, which the train
    # parser still takes for eval_strategy)
    args.update(job.training.model_dump())
    args.update({k: getattr(plan, k) for k in FROM_PLAN})
    if not job.data.validation_path:  # nothing to evaluate on
        args["evaluation_strategy"] = "no"
    if "tensorboard" in job.training.report_to:  # a fixed folder, so train can sync it under <run>/tb/
        args["logging_dir"] = f"{out}/{TB}"
    if job.use_lora:
        args.update({LORA_RENAMED[k]: v for k, v in job.lora.model_dump().items()})
    if job.sync:
        args.update(sync_to=job.sync.target, resume="auto", s3_endpoint_url=job.sync.endpoint_url)
    return {k: v for k, v in args.items() if v is not None}


def train_args_path(job: JobSpec) -> str:
    """Where the run stage writes the arguments file (inside the container)."""
    return f"{job.run_dir()}/{TRAIN_ARGS_NAME}"


def train_args_file(job: JobSpec, plan: Plan) -> tuple[str, str]:
    """(path, JSON text) of the train stage's arguments file: the stage writes it just before train runs."""
    return train_args_path(job), json.dumps(train_args(job, plan), indent=2) + "\n"


def write_train_args(job: JobSpec, plan: Plan, path: str | Path | None = None) -> Path:
    """Write ``train_args(job, plan)`` as JSON (atomically: a relaunch never reads half a file)."""
    default, text = train_args_file(job, plan)
    target = Path(path or default)
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(target, text)
    return target


def with_flags(argv: list[str], files: Iterable[tuple[str, str]]) -> list[str]:
    """``argv`` with each arguments file it names (``files``: (path, JSON text), as a stage step carries them)
    shown as the same arguments in flag form: what the command means, for a reader or a test."""
    texts = dict(files)
    out: list[str] = []
    for arg in argv:
        out += as_flags(json.loads(texts[arg])) if arg in texts else [arg]
    return out


def as_flags(args: dict[str, Any]) -> list[str]:
    """The same arguments as command-line flags, rendered generically (for a hand-typed command or a launcher
    that cannot ship a file): booleans as True/False, lists comma-joined (HF's parser takes one
    ``--report_to`` value; train splits the commas)."""
    flags: list[str] = []
    for name, value in args.items():
        if value is None:
            continue
        if isinstance(value, bool):
            text = "True" if value else "False"
        elif isinstance(value, list | tuple):
            text = ",".join(str(v) for v in value)
        else:
            text = str(value)
        flags += [f"--{name}", text]
    return flags
