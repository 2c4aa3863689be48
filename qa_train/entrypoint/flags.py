"""The spec's training section as ``python -m qa_train train`` flags, and the plan of a plain job spec."""

from __future__ import annotations

from qa_train.contract import TB
from qa_train.spec import JobSpec, Plan


def _b(v: bool) -> str:
    return "True" if v else "False"


def default_plan(job: JobSpec) -> Plan:
    """A plain job spec (not rendered by the launcher): one process, precision as the spec says (else off)."""
    t = job.training
    return Plan(
        launcher="python",
        num_gpus=0,
        bf16=bool(t.bf16),
        tf32=bool(t.tf32),
        per_device_train_batch_size=t.per_device_train_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
    )


def train_flags(job: JobSpec, plan: Plan) -> list[str]:
    """The original README's training flags (HfArgumentParser names), plus sync/resume and LoRA settings."""
    t = job.training
    f = ["--model_name_or_path", job.base_model(), "--train_path", job.data.train_path]
    if job.data.validation_path:
        f += ["--validation_path", job.data.validation_path]
    if job.model.model_type:
        f += ["--model_type", job.model.model_type]
    eval_strategy = t.evaluation_strategy if job.data.validation_path else "no"
    f += [
        "--use_lora", _b(job.use_lora),
        "--qlora", _b(job.qlora),
        "--bf16", _b(plan.bf16),
        "--output_dir", job.train_output_dir(),
        "--num_train_epochs", str(t.num_train_epochs),
        "--per_device_train_batch_size", str(plan.per_device_train_batch_size),
        "--per_device_eval_batch_size", str(t.per_device_eval_batch_size),
        "--gradient_accumulation_steps", str(plan.gradient_accumulation_steps),
        "--eval_accumulation_steps", str(t.eval_accumulation_steps),
        "--evaluation_strategy", eval_strategy,
        "--eval_steps", str(t.eval_steps),
        "--save_strategy", t.save_strategy,
        "--save_steps", str(t.save_steps),
    ]  # fmt: skip
    if t.save_total_limit is not None:
        f += ["--save_total_limit", str(t.save_total_limit)]
    f += [
        "--learning_rate", str(t.learning_rate),
        "--lr_scheduler_type", t.lr_scheduler_type,
        "--logging_steps", str(t.logging_steps),
        "--tf32", _b(plan.tf32),
        "--model_max_length", str(t.model_max_length),
        "--gradient_checkpointing", _b(t.gradient_checkpointing),
        "--packing", _b(job.packing),
        "--run_name", job.run_name,
        "--seed", str(t.seed),
    ]  # fmt: skip
    if t.max_steps is not None:
        f += ["--max_steps", str(t.max_steps)]
    if t.save_every_minutes is not None:
        f += ["--save_every_minutes", str(t.save_every_minutes)]
    f += ["--report_to", ",".join(t.report_to)]  # HF's parser takes one value: train splits the commas
    if "tensorboard" in t.report_to:  # a fixed folder, so train can sync it under <run>/tb/
        f += ["--logging_dir", f"{job.train_output_dir()}/{TB}"]
    if job.use_lora:
        f += [
            "--lora_r",
            str(job.lora.r),
            "--lora_alpha",
            str(job.lora.alpha),
            "--lora_dropout",
            str(job.lora.dropout),
        ]
    if job.sync:
        f += ["--sync_to", job.sync.target, "--resume", "auto"]
        if job.sync.endpoint_url:
            f += ["--s3_endpoint_url", job.sync.endpoint_url]
    return f
