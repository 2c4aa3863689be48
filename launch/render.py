"""Render a job spec for one GPU profile: batch sizes, precision, launcher, DeepSpeed config, memory check.

The result (``RenderedSpec``) is exactly what the container receives in ``QA_JOB_SPEC``; secrets are never part
of it (only their names).
"""

from __future__ import annotations

import copy
import math
import re
import secrets as _random
import time
from dataclasses import dataclass
from typing import Any, Literal

from launch.gpus import PROFILES, GpuProfile
from launch.memory import Estimate, ModelShape, estimate, lookup_shape
from qa_train.spec import GpuInfo, JobSpec, Plan, RenderedSpec

CONTAINER_COMMAND = ["python", "-m", "qa_train", "run"]
Offload = Literal["auto", "none", "optimizer", "all"]
OFFLOADS = ("auto", "none", "optimizer", "all")


INTERRUPTIBLE_SAVE_MINUTES = 30.0  # default save_every_minutes of an interruptible job (spec leaves it unset)


def with_save_bound(job: JobSpec, interruptible: bool) -> JobSpec:
    """An interruptible job whose spec sets no ``training.save_every_minutes`` gets the default bound: with
    ``save_strategy: epoch`` a preemption late in an epoch would otherwise lose the whole epoch."""
    if not interruptible or job.training.save_every_minutes is not None:
        return job
    training = job.training.model_copy(update={"save_every_minutes": INTERRUPTIBLE_SAVE_MINUTES})
    return job.model_copy(update={"training": training})


def preemption_bound_line(minutes: float | None, price_per_hour: float | None = None) -> str | None:
    """``a preemption loses at most M minutes ≈ $X at this offer's price`` (no dollars without a price)."""
    if not minutes:
        return None
    line = f"a preemption loses at most {minutes:g} minutes of training"
    if price_per_hour:
        line += f" ≈ ${price_per_hour * minutes / 60:.2f} at this offer's price (${price_per_hour:.3f}/h)"
    return line + " (training.save_every_minutes)"


class PlanError(ValueError):
    """The job cannot run as asked on this hardware; the message says what would."""


@dataclass(frozen=True)
class Candidate:
    num_gpus: int
    zero_stage: int  # 0 = no DeepSpeed
    offload_optimizer: bool
    offload_param: bool

    def describe(self, profile: GpuProfile) -> str:
        if self.zero_stage == 0:
            how = "no DeepSpeed"
        else:
            off = [k for k, v in (("optimizer", self.offload_optimizer), ("param", self.offload_param)) if v]
            how = f"ZeRO-{self.zero_stage} " + (
                f"offload {'+'.join(off)} to cpu" if off else "without offload"
            )
        return f"{self.num_gpus}x {profile.name} ({how})"


def mode_of(job: JobSpec) -> str:
    """full | lora | qlora, spelled once (``qa_train.spec.training_mode``, also train_summary.json's)."""
    return job.mode()


def deepspeed_config(stage: int, offload_optimizer: bool, offload_param: bool) -> dict[str, Any]:
    """A HF-Trainer-compatible DeepSpeed config ("auto" values are filled from the training arguments)."""
    zero: dict[str, Any] = {
        "stage": stage,
        "overlap_comm": True,
        "contiguous_gradients": True,
        "reduce_bucket_size": "auto",
    }
    if stage == 3:
        zero.update(
            {
                "sub_group_size": 1_000_000_000,
                "stage3_prefetch_bucket_size": "auto",
                "stage3_param_persistence_threshold": "auto",
                "stage3_max_live_parameters": 1_000_000_000,
                "stage3_max_reuse_distance": 1_000_000_000,
                "stage3_gather_16bit_weights_on_model_save": True,
            }
        )
    if offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if offload_param:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    cfg: dict[str, Any] = {
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "zero_optimization": zero,
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "steps_per_print": 2000,
        "wall_clock_breakdown": False,
    }
    if offload_optimizer:
        # ZeRO-Offload needs DeepSpeed's own (CPU) Adam; HF fills the hyper-parameters from its arguments.
        cfg["optimizer"] = {
            "type": "AdamW",
            "params": {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto"},
        }
    return cfg


def _offload_flags(profile: GpuProfile, offload: str) -> tuple[bool, bool]:
    if offload == "auto":
        return profile.offload_optimizer, profile.offload_param
    return offload in ("optimizer", "all"), offload == "all"


def candidates(profile: GpuProfile, num_gpus: int | None, offload: str, mode: str) -> list[Candidate]:
    """Plans to try, cheapest first: 1 GPU without DeepSpeed, then ZeRO-3 on 1, 2, 4, 8 GPUs."""
    counts = [num_gpus] if num_gpus else list(profile.counts)
    opt, par = _offload_flags(profile, offload)
    out = []
    for n in counts:
        if n == 1 and offload in ("auto", "none"):
            out.append(Candidate(1, 0, False, False))
        if mode != "qlora":  # 4-bit bitsandbytes weights cannot be partitioned by ZeRO-3
            out.append(Candidate(n, 3, opt, par))
    return out


def _estimate(shape: ModelShape, job: JobSpec, c: Candidate, micro: int) -> Estimate:
    return estimate(
        shape,
        mode=mode_of(job),
        num_gpus=c.num_gpus,
        zero_stage=c.zero_stage,
        offload_optimizer=c.offload_optimizer,
        offload_param=c.offload_param,
        micro_batch=micro,
        seq_len=job.training.model_max_length,
        gradient_checkpointing=job.training.gradient_checkpointing,
        lora_r=job.lora.r,
    )


def _alternatives(
    job: JobSpec, shape: ModelShape, profile: GpuProfile, offload: str, micro: int
) -> list[str]:
    """What would fit instead: more GPUs of this profile, its default offload, or another profile."""
    mode = mode_of(job)
    alts: list[str] = []
    seen: set[Candidate] = set()
    for off in dict.fromkeys([offload, "auto", "all"]):
        for c in candidates(profile, None, off, mode):
            if _estimate(shape, job, c, micro).gpu_gb <= profile.memory_gb:
                if c not in seen:
                    seen.add(c)
                    flag = f"--num_gpus {c.num_gpus}" + ("" if off == offload else f" --offload {off}")
                    alts.append(f"{flag} ({c.describe(profile)})")
                break
    for other in PROFILES.values():
        if other.is_cpu or other.name == profile.name:
            continue
        for c in candidates(other, None, "auto", mode):
            if _estimate(shape, job, c, min(micro, other.micro_batch)).gpu_gb <= other.memory_gb:
                alts.append(f"--gpu {other.name} --num_gpus {c.num_gpus}")
                break
    return list(dict.fromkeys(alts))


def choose_plan(
    job: JobSpec, profile: GpuProfile, num_gpus: int | None = None, offload: str = "auto"
) -> tuple[Candidate, Estimate | None, int]:
    """Pick the first candidate that fits; raise PlanError naming what would fit otherwise."""
    if offload not in OFFLOADS:
        raise PlanError(f"--offload must be one of {OFFLOADS}, got {offload!r}")
    mode = mode_of(job)
    explicit_micro = "per_device_train_batch_size" in job.training.model_fields_set
    micro = (
        job.training.per_device_train_batch_size if explicit_micro or profile.is_cpu else profile.micro_batch
    )
    if profile.is_cpu:
        if num_gpus:
            raise PlanError("--gpu cpu runs without GPUs; drop --num_gpus")
        return Candidate(0, 0, False, False), None, micro
    if num_gpus is not None and num_gpus < 1:
        raise PlanError(f"--num_gpus must be >= 1, got {num_gpus}")
    if mode == "qlora" and num_gpus and num_gpus > 1:
        raise PlanError(
            "QLoRA cannot run with DeepSpeed ZeRO-3 (4-bit bitsandbytes weights cannot be partitioned across GPUs); "
            "use --num_gpus 1, or use_lora without qlora for ZeRO-3 on several GPUs"
        )
    if mode == "qlora" and offload not in ("auto", "none"):
        raise PlanError("QLoRA cannot use DeepSpeed ZeRO-3 offload; use --offload auto or none")
    shape = lookup_shape(job)
    cands = candidates(profile, num_gpus, offload, mode)
    if shape is None:  # unknown model: no estimate, take the first candidate for the asked GPU count
        return cands[0], None, micro
    tried = []
    for c in cands:
        est = _estimate(shape, job, c, micro)
        if est.gpu_gb <= profile.memory_gb:
            return c, est, micro
        tried.append(f"{c.describe(profile)} needs ~{est.gpu_gb:.0f} GB per GPU")
    alts = _alternatives(job, shape, profile, offload, micro)
    raise PlanError(
        f"{mode} fine-tuning of {shape.name} ({shape.params / 1e9:.2f}B params, micro-batch {micro}, "
        f"seq {job.training.model_max_length}) does not fit on {profile.display} ({profile.memory_gb:.0f} GB): "
        + "; ".join(tried)
        + (
            ". Would fit: " + ", or ".join(alts)
            if alts
            else ". No profile fits; reduce model_max_length or use LoRA"
        )
    )


def new_job_id(run_name: str) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return f"{run_name}-{stamp}-{_random.token_hex(2)}"


_JOB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,127}$")


def render(
    job: JobSpec,
    gpu: str,
    *,
    num_gpus: int | None = None,
    offload: str = "auto",
    image: str | None = None,
    job_id: str | None = None,
    env: dict[str, str] | None = None,
    secret_names: list[str] | None = None,
) -> RenderedSpec:
    """Fill the per-GPU plan into the job and produce the rendered spec (no secret values in it)."""
    profile = PROFILES.get(gpu.strip().lower())
    if profile is None:
        raise PlanError(f"unknown GPU profile {gpu!r}; choose one of: {', '.join(PROFILES)}")
    if job_id is not None and not _JOB_ID_RE.match(job_id):
        raise PlanError(f"--job_id {job_id!r}: letters, digits, '.', '_' and '-' only")
    cand, est, micro = choose_plan(job, profile, num_gpus, offload)
    t = job.training
    fields = t.model_fields_set
    n = max(cand.num_gpus, 1)
    if "gradient_accumulation_steps" in fields:
        accum = t.gradient_accumulation_steps
    else:  # keep the job's effective batch (README: 3 x 10 = 30 sequences per optimizer step)
        accum = max(1, math.ceil(t.per_device_train_batch_size * t.gradient_accumulation_steps / (micro * n)))
    plan = Plan(
        launcher="deepspeed" if cand.zero_stage else "python",
        num_gpus=cand.num_gpus,
        bf16=profile.bf16 if t.bf16 is None else t.bf16,
        tf32=profile.tf32 if t.tf32 is None else t.tf32,
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=accum,
    )
    ds = (
        deepspeed_config(cand.zero_stage, cand.offload_optimizer, cand.offload_param)
        if cand.zero_stage
        else None
    )
    base_env = {"PYTHONUNBUFFERED": "1", "QA_RUN_NAME": job.run_name}
    if job.sync and job.sync.endpoint_url:
        base_env["AWS_ENDPOINT_URL"] = job.sync.endpoint_url
    base_env.update(env or {})
    memory = None
    if est is not None:
        memory = {"plan": cand.describe(profile), **est.to_dict()}
    return RenderedSpec(
        job_id=job_id or new_job_id(job.run_name),
        image=image or job.image,
        gpu=GpuInfo(profile=profile.name, name=profile.display, count=cand.num_gpus),
        command=list(CONTAINER_COMMAND),
        env=base_env,
        secret_env=sorted(secret_names or []),
        deepspeed=copy.deepcopy(ds),
        disk_gb=job.disk_gb,
        plan=plan,
        job=job,
        memory=memory,
    )
