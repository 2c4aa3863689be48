"""The plan of a plain job spec, and the train arguments in flag form.

The arguments themselves are mapped once, generically, in ``qa_train/train_config.py``; the train stage passes
them as one JSON file (``qa_train train ARGS.json``). ``train_flags`` renders the same dict as flags, never
by hand: for a command typed by hand or a reader of the plan.
"""

from __future__ import annotations

from qa_train.spec import JobSpec, Plan
from qa_train.train_config import as_flags, train_args


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
    """``train_args(job, plan)`` as ``python -m qa_train train`` flags (the original README's names)."""
    return as_flags(train_args(job, plan))
