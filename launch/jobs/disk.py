"""Preflight: can the job's disk hold what training writes? (issue 23 item 4)

Why: a disk that fills mid-run costs the hours since the last checkpoint and ends with "no space left"; the
sizes are known before anything is rented (the plan's parameter counts), so ``submit`` warns when ``disk_gb``
cannot hold two checkpoints (the Trainer writes the next before it deletes the oldest) plus the base model,
the final save and, for LoRA, the merged model. An estimate, not a refusal: sizes vary with the save format.
"""

from __future__ import annotations

from typing import Any

GB = 1e9


def checkpoint_bytes(rendered: Any) -> tuple[float, float] | None:
    """(one checkpoint, everything on disk at the worst moment) in bytes; None without a memory estimate."""
    memory = rendered.memory or {}
    params, trainable = memory.get("params"), memory.get("trainable")
    if not params or not trainable:
        return None
    job, plan = rendered.job, rendered.plan
    weight = 2.0 if plan.bf16 else 4.0
    adam = 8.0 * trainable + (4.0 * trainable if rendered.deepspeed else 0.0)  # m, v (+ fp32 master, ZeRO)
    if job.use_lora:
        saved = 4.0 * trainable  # adapters (and the new token rows) in fp32
        ckpt = saved + adam
        total = 2 * ckpt + saved + weight * params  # + the merged model
    else:
        saved = weight * params
        ckpt = saved + adam
        total = 2 * ckpt + saved
    if job.model.make_tiny is None:
        total += 2.0 * params  # the base model's download (bf16 on the hub)
    return ckpt, total


def disk_warning(rendered: Any) -> str | None:
    """One ``warning:`` line when ``disk_gb`` looks too small for two checkpoints of the planned model."""
    sizes = checkpoint_bytes(rendered)
    if sizes is None:
        return None
    ckpt, total = sizes
    if rendered.disk_gb * GB >= total:
        return None
    return (
        f"warning: disk_gb {rendered.disk_gb} may be too small: a checkpoint of this model is ~{ckpt / GB:.1f} GB and "
        f"two of them with the base model and the final save need ~{total / GB:.0f} GB; raise disk_gb, or the "
        "run may end with 'no space left on the disk of --output_dir'"
    )
