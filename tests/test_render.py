"""Rendering per GPU profile: DeepSpeed sections, launcher choice, batch sizes, and the memory check."""

from __future__ import annotations

import pytest

from launch.gpus import PROFILES
from launch.memory import KNOWN, estimate
from launch.render import PlanError, render
from qa_train.spec import parse_job

DATA = {"train_path": "/data/t.json", "hotpot_qa_dev_path": "/data/h.json"}


def job(**kw):
    return parse_job(
        {"run_name": "r", "model": {"name_or_path": "mistralai/Mistral-7B-v0.1"}, "data": DATA, **kw}
    )


def test_mistral_param_count_matches_the_published_size():
    assert 7.2e9 < KNOWN["mistral-7b-v0.1"].params < 7.3e9


def test_a100_renders_zero3_without_offload():
    r = render(job(), "a100")
    zero = r.deepspeed["zero_optimization"]
    assert zero["stage"] == 3
    assert "offload_optimizer" not in zero and "offload_param" not in zero
    assert r.plan.launcher == "deepspeed" and r.gpu.count >= 2  # 7B full does not fit one 80 GB card
    assert r.plan.bf16 and r.plan.tf32


def test_a6000_renders_zero3_with_optimizer_and_param_offload_to_pinned_cpu():
    r = render(job(), "a6000")
    zero = r.deepspeed["zero_optimization"]
    assert zero["stage"] == 3
    assert zero["offload_optimizer"] == {"device": "cpu", "pin_memory": True}
    assert zero["offload_param"] == {"device": "cpu", "pin_memory": True}
    assert r.deepspeed["optimizer"]["type"] == "AdamW"  # ZeRO-Offload needs DeepSpeed's CPU Adam
    assert r.gpu.count == 1


def test_memory_check_refuses_full_7b_on_one_a6000_without_offload():
    with pytest.raises(PlanError) as e:
        render(job(), "a6000", num_gpus=1, offload="none")
    msg = str(e.value)
    assert "does not fit on RTX A6000" in msg
    assert "--num_gpus 4" in msg  # more of the same card would
    assert "--offload auto" in msg  # or the profile's offload
    assert "--gpu a100 --num_gpus 2" in msg


def test_qlora_with_zero3_is_refused_clearly():
    q = job(use_lora=True, qlora=True)
    with pytest.raises(PlanError, match="QLoRA cannot run with DeepSpeed ZeRO-3"):
        render(q, "a100", num_gpus=2)
    with pytest.raises(PlanError, match="QLoRA cannot use DeepSpeed ZeRO-3 offload"):
        render(q, "rtx4090", offload="all")
    r = render(q, "rtx4090")
    assert r.plan.launcher == "python" and r.deepspeed is None and r.gpu.count == 1


def test_lora_fits_one_card_without_deepspeed():
    r = render(job(use_lora=True), "a100")
    assert r.plan.launcher == "python" and r.deepspeed is None and r.gpu.count == 1


def test_cpu_profile_has_no_gpu_no_deepspeed_no_bf16():
    r = render(job(), "cpu")
    assert r.gpu.count == 0 and r.deepspeed is None and r.plan.launcher == "python"
    assert not r.plan.bf16 and not r.plan.tf32
    with pytest.raises(PlanError, match="without GPUs"):
        render(job(), "cpu", num_gpus=2)


def test_effective_batch_is_kept_across_gpu_counts():
    for gpu in ("a100", "a6000", "rtx4090"):
        r = render(job(), gpu)
        eff = r.plan.per_device_train_batch_size * r.plan.gradient_accumulation_steps * max(r.gpu.count, 1)
        assert 30 <= eff < 30 + r.plan.per_device_train_batch_size * r.gpu.count, gpu
    explicit = job(training={"per_device_train_batch_size": 1, "gradient_accumulation_steps": 7})
    r = render(explicit, "a6000")
    assert (r.plan.per_device_train_batch_size, r.plan.gradient_accumulation_steps) == (1, 7)


def test_estimate_scales_with_zero3_sharding_and_offload():
    shape = KNOWN["mistral-7b-v0.1"]
    one = estimate(shape, mode="full", num_gpus=1, zero_stage=3)
    four = estimate(shape, mode="full", num_gpus=4, zero_stage=3)
    off = estimate(shape, mode="full", num_gpus=1, zero_stage=3, offload_optimizer=True, offload_param=True)
    assert one.gpu_gb > 100 and four.gpu_gb < one.gpu_gb / 2
    assert off.gpu_gb < 20 and off.cpu_gb > 100
    q = estimate(shape, mode="qlora")
    lo = estimate(shape, mode="lora")
    assert q.gpu_gb < lo.gpu_gb < one.gpu_gb


def test_every_profile_names_its_cloud_gpus():
    for p in PROFILES.values():
        if not p.is_cpu:
            assert p.vast_names and p.runpod_ids and p.memory_gb > 0
    assert PROFILES["a100"].vast_min_ram_mb >= 79000
    assert "NVIDIA RTX A6000" in PROFILES["a6000"].runpod_ids


def test_unknown_profile_and_bad_job_id():
    with pytest.raises(PlanError, match="unknown GPU profile"):
        render(job(), "tpu")
    with pytest.raises(PlanError, match="--job_id"):
        render(job(), "cpu", job_id="a b;rm -rf")
