"""Training on more than one rank (issue 24), on CPU with gloo: the way ``qa_train run`` launches it
(``deepspeed --num_gpus N`` / ``torchrun --nproc_per_node N``).

Each mode trains the same global batch twice: one rank with k accumulation steps, and k ranks with one. The
per-step losses, the real tokens trained on (no pack lost or doubled across ranks) and the final weights must
agree. Tolerance: relative 1e-4 on a loss, 1e-4 absolute on a weight (fp32 on CPU; the two runs only differ
in the order of the gradient reductions).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.test_resume_exact import GroupProc, kill_after_first_commit
from tests.test_sync_train import Proc, step_losses

pytestmark = pytest.mark.slow
pytest_plugins = ["tests.fixtures_images"]

STEPS = 4
LOSS_REL = 1e-4
WEIGHT_ATOL = 1e-4

_PORTS = iter(range(29700 + os.getpid() % 200, 65000, 7))  # one master port per launch (a port can linger)


def _ds_config(stage: int, offload: bool) -> dict:
    zero: dict = {"stage": stage}
    if stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    if offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": False}
        if stage == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": False}
    return {
        "zero_optimization": zero,
        "bf16": {"enabled": False},
        "optimizer": {"type": "AdamW", "params": {"lr": "auto", "weight_decay": "auto"}},
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "train_batch_size": "auto",
    }


def train_cmd(ranks: int, launcher: str, argv: list[str]) -> list[str]:
    """The command ``qa_train run`` would build for this many ranks (see ``qa_train.entrypoint.stages``)."""
    port = str(next(_PORTS))
    if launcher == "deepspeed":
        return [
            "deepspeed",
            "--num_gpus",
            str(ranks),
            "--master_port",
            port,
            "--module",
            "qa_train",
            "train",
            *argv,
        ]
    if ranks > 1:
        return [
            "torchrun",
            "--nproc_per_node",
            str(ranks),
            "--master_port",
            port,
            "-m",
            "qa_train",
            "train",
            *argv,
        ]
    return [sys.executable, "-m", "qa_train", "train", *argv]


def base_argv(model: Path, data: Path, out: Path, ranks: int, global_batch: int = 2) -> list[str]:
    assert global_batch % ranks == 0
    return [
        "--model_name_or_path", str(model), "--train_path", str(data), "--output_dir", str(out),
        "--max_steps", str(STEPS), "--logging_steps", "1", "--save_strategy", "no",
        "--per_device_train_batch_size", "1", "--gradient_accumulation_steps", str(global_batch // ranks),
        "--packing", "True", "--model_max_length", "512", "--report_to", "none", "--seed", "3",
        "--dataloader_num_workers", "0", "--bf16", "False", "--learning_rate", "1e-3", "--disable_tqdm", "True",
        "--lora_dropout", "0",
    ]  # fmt: skip


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "OMP_NUM_THREADS": "1",  # two ranks on two cores: no oversubscription
    }


def run_train(ranks: int, launcher: str, argv: list[str], env: dict[str, str] | None = None) -> Proc:
    proc = Proc(train_cmd(ranks, launcher, argv), env or _env())
    rc = proc.wait(timeout=1200)
    assert rc == 0, proc.output[-4000:]
    return proc


def _weights(out: Path) -> dict[str, torch.Tensor]:
    name = (
        "adapter_model.safetensors" if (out / "adapter_model.safetensors").exists() else "model.safetensors"
    )
    return load_file(str(out / name))


def assert_same_training(one: Path, many: Path) -> None:
    """Per-step losses, real tokens trained on, and final weights of the 1-rank and the k-rank run."""
    a, b = step_losses(one / "trainer_state.json"), step_losses(many / "trainer_state.json")
    assert sorted(a) == sorted(b) == list(range(1, STEPS + 1)), (a, b)
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=LOSS_REL), (step, a, b)
    sa = json.loads((one / "train_summary.json").read_text())
    sb = json.loads((many / "train_summary.json").read_text())
    assert sa["train_tokens"] == sb["train_tokens"] > 0, (sa, sb)  # every pack once, across the ranks
    wa, wb = _weights(one), _weights(many)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k].float(), wb[k].float(), atol=WEIGHT_ATOL), k


MODES = {
    # name: (launcher, extra flags, DeepSpeed config or None)
    "ddp-lora": ("torchrun", ["--use_lora", "True"], None),
    "ddp-full": ("torchrun", ["--use_lora", "False"], None),
    "zero2": ("deepspeed", ["--use_lora", "False"], _ds_config(2, offload=False)),
    "zero3": ("deepspeed", ["--use_lora", "False"], _ds_config(3, offload=False)),
    "zero3-offload": ("deepspeed", ["--use_lora", "False"], _ds_config(3, offload=True)),
}
# Not here: LoRA under ZeRO-3. peft builds the trained new-token rows under ZeRO-3 on a CUDA device only
# (peft/tuners/trainable_tokens/layer.py, _collect_token_weights: "right now, only CUDA is implemented"), so
# it cannot start on a CPU rank; it runs on GPUs only.


@pytest.mark.parametrize("mode", list(MODES))
def test_two_ranks_train_like_one_rank_with_accumulation(mode, tmp_path, tiny_llama, records_file):
    launcher, extra, ds = MODES[mode]
    if ds is not None:
        (tmp_path / "ds.json").write_text(json.dumps(ds))
        extra = [*extra, "--deepspeed", str(tmp_path / "ds.json")]
    run_train(1, launcher, [*base_argv(tiny_llama, records_file, tmp_path / "one", 1), *extra])
    two = run_train(2, launcher, [*base_argv(tiny_llama, records_file, tmp_path / "two", 2), *extra])
    assert "Distributed: rank 0 of 2" in two.output, two.output[-3000:]
    assert_same_training(tmp_path / "one", tmp_path / "two")


def test_two_rank_qlora_trains_or_is_refused_clearly(tmp_path, tiny_llama, records_file):
    """QLoRA across 2 ranks (DDP): trains where bitsandbytes' 4-bit layers run on this CPU."""
    argv = [
        *base_argv(tiny_llama, records_file, tmp_path / "two", 2),
        "--use_lora",
        "True",
        "--qlora",
        "True",
    ]
    proc = Proc(train_cmd(2, "torchrun", argv), _env())
    rc = proc.wait(timeout=1200)
    assert rc == 0, proc.output[-4000:]
    summary = json.loads((tmp_path / "two" / "train_summary.json").read_text())
    assert summary["mode"] == "qlora" and summary["global_step"] == STEPS


RESUME_STEPS = 6


def test_two_rank_zero3_killed_after_a_commit_resumes_on_two_ranks_with_the_same_losses(
    s3, tmp_path, tiny_llama, records_file
):
    """kill -9 of the whole group after a committed checkpoint; a fresh output folder resumes from S3 on 2
    ranks. The committed checkpoint holds both ranks' ZeRO shards and RNG states; the losses of the resumed
    steps equal an uninterrupted 2-rank run's."""
    (tmp_path / "ds.json").write_text(json.dumps(_ds_config(3, offload=False)))
    env = {**_env(), **s3.env}
    sync_to = s3.uri("runs")

    def argv(out: Path, run_name: str) -> list[str]:
        a = base_argv(tiny_llama, records_file, out, 2)
        a[a.index("--max_steps") + 1] = str(RESUME_STEPS)
        a[a.index("--save_strategy") + 1] = "steps"
        return [*a, "--save_steps", "2", "--deepspeed", str(tmp_path / "ds.json"), "--sync_to", sync_to,
                "--run_name", run_name]  # fmt: skip

    ref = run_train(2, "deepspeed", argv(tmp_path / "ref", "ref2"), env)
    ref_losses = step_losses(tmp_path / "ref" / "trainer_state.json")
    assert sorted(ref_losses) == list(range(1, RESUME_STEPS + 1)), ref.output[-2000:]

    victim = GroupProc(train_cmd(2, "deepspeed", argv(tmp_path / "first", "job2")), env)
    kill_after_first_commit(victim, s3.client(), s3.bucket, "runs/job2/checkpoint-", timeout=900)
    assert victim.p.returncode == -signal.SIGKILL
    committed = sorted(k for k in s3.keys("runs/job2/") if k.endswith("/_manifest.json"))
    assert committed, s3.keys("runs/job2/")
    ckpt = committed[0].rsplit("/", 1)[0]
    step = int(ckpt.rsplit("-", 1)[1])
    keys = [k.split(ckpt + "/", 1)[1] for k in s3.keys(ckpt + "/")]
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= set(keys), keys
    for rank in (0, 1):
        assert any(f"zero_pp_rank_{rank}_" in k and "optim_states" in k for k in keys), keys
        assert any(f"zero_pp_rank_{rank}_" in k and "model_states" in k for k in keys), keys

    resumed = run_train(2, "deepspeed", argv(tmp_path / "second", "job2"), env)
    assert f"Resuming from checkpoint-{step} (" in resumed.output, resumed.output[-3000:]
    losses = step_losses(tmp_path / "second" / "trainer_state.json")
    assert sorted(losses) == list(range(1, RESUME_STEPS + 1))
    for s in range(step + 1, RESUME_STEPS + 1):
        assert losses[s] == pytest.approx(ref_losses[s], rel=LOSS_REL), (s, losses, ref_losses)
    wa, wb = _weights(tmp_path / "ref"), _weights(tmp_path / "second")
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=WEIGHT_ATOL), k


@pytest.mark.docker
def test_container_runs_a_two_rank_lora_spec_train_merge_eval(s3, cpu_image, tmp_path, records_file,
                                                                        validation_file, hotpot_file):  # fmt: skip
    """Item 5: a rendered spec with ``plan.num_gpus: 2`` (DDP LoRA: the shipped LoRA plan on several GPUs
    without ZeRO), through the CPU image's own entrypoint (``python -m qa_train run``): torchrun trains on two
    gloo ranks, merge and eval run once, everything lands in object storage, the report says succeeded."""
    import shutil
    import subprocess
    import tempfile
    import uuid

    from launch.render import render
    from qa_train.contract import RunLayout
    from qa_train.spec import load_job
    from qa_train.storage import RunStore

    job = load_job(Path(__file__).resolve().parent.parent / "jobs" / "smoke.yaml")
    job = job.model_copy(update={"run_name": "tworank", "sync": job.sync.model_copy(
        update={"target": s3.uri("runs"), "endpoint_url": s3.endpoint_url})})  # fmt: skip
    spec = render(job, "cpu", image=cpu_image)
    spec = spec.model_copy(
        update={
            "plan": spec.plan.model_copy(update={"launcher": "python", "num_gpus": 2}),
        }
    )
    data = Path(tempfile.mkdtemp(prefix="qa-2rank-", dir="/tmp"))
    name = f"qa-2rank-{uuid.uuid4().hex[:8]}"
    try:
        os.chmod(data, 0o755)
        for src, dst in ((records_file, "train.json"), (validation_file, "validation.json"),
                         (hotpot_file, "hotpot_dev.json")):  # fmt: skip
            shutil.copy(src, data / dst)
            os.chmod(data / dst, 0o644)
        run = ["docker", "run", "--name", name, "--network", "host", "-v", f"{data}:/data:ro",
               "-e", f"QA_JOB_SPEC={spec.model_dump_json()}", "-e", "PYTHONUNBUFFERED=1", "-e", "OMP_NUM_THREADS=1"]  # fmt: skip
        for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION"):
            run += ["-e", k]  # values from this process's environment, not the command line
        env = {**os.environ, **s3.env}
        p = subprocess.run([*run, cpu_image], capture_output=True, text=True, timeout=1500, env=env)
        out = p.stdout + p.stderr
        assert p.returncode == 0, out[-5000:]
        assert "Distributed: rank 0 of 2" in out, out[-3000:]
        report = RunStore(RunLayout.of(s3.uri("runs"), "tworank"), s3.endpoint_url).read_report()
        assert report is not None and report.state == "succeeded", report
        keys = s3.keys("runs/tworank/")
        for folder in ("final", "merged", "eval"):
            assert f"runs/tworank/{folder}/_manifest.json" in keys, sorted(keys)
        ckpts = {k.split("/")[2] for k in keys if "/checkpoint-" in k and k.endswith("_manifest.json")}
        assert ckpts, sorted(keys)
        for c in ckpts:
            assert {f"runs/tworank/{c}/rng_state_0.pth", f"runs/tworank/{c}/rng_state_1.pth"} <= set(keys), c
        summary = json.loads(s3.client().get_object(Bucket=s3.bucket, Key="runs/tworank/final/train_summary.json")
                             ["Body"].read())  # fmt: skip
        assert summary["world_size"] == 2 and summary["global_step"] == job.training.max_steps, summary
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)
        shutil.rmtree(data, ignore_errors=True)
