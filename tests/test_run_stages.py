"""``python -m qa_train run``: stage commands, order, failure naming, spec errors — with real subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from launch.render import render
from qa_train.entrypoint.stages import build_stages
from qa_train.spec import parse_job
from qa_train.train_config import with_flags

REPO = Path(__file__).resolve().parent.parent
README_FLAGS = (
    "--model_name_or_path --train_path --validation_path --model_type --use_lora --qlora --bf16 --output_dir "
    "--num_train_epochs --per_device_train_batch_size --per_device_eval_batch_size --gradient_accumulation_steps "
    "--eval_accumulation_steps --evaluation_strategy --eval_steps --save_strategy --save_steps --save_total_limit "
    "--learning_rate --lr_scheduler_type --logging_steps --tf32 --model_max_length --gradient_checkpointing --packing"
).split()


def mistral(**kw):
    data = {
        "train_path": "/data/t.json",
        "validation_path": "/data/v.json",
        "hotpot_qa_dev_path": "/data/h.json",
    }
    return parse_job({"run_name": "r", "model": {"name_or_path": "mistralai/Mistral-7B-v0.1", "model_type": "mistral"},
                      "data": data, "sync": {"target": "s3://bkt/runs", "endpoint_url": "http://s3:8333"}, **kw})  # fmt: skip


def _opt(cmd: list[str], flag: str) -> str:
    return cmd[cmd.index(flag) + 1]


def _argv(step) -> list[str]:
    """The step's command with its train arguments file shown as the same flags."""
    return with_flags(step.argv, step.files)


def test_full_job_on_a6000_uses_deepspeed_with_the_readme_flags():
    r = render(mistral(), "a6000")
    stages = build_stages(r.job, r.plan, "/runs/r/ds_config.json")
    assert [s.name for s in stages] == ["train", "eval"]
    (train,) = [_argv(s) for s in stages[0].steps]
    assert Path(train[0]).name == "deepspeed" or train[1:3] == ["-m", "deepspeed.launcher.runner"]
    i = train.index("--num_gpus")
    assert train[i : i + 5] == ["--num_gpus", "1", "--module", "qa_train", "train"]
    assert all(f in train for f in README_FLAGS)
    assert _opt(train, "--deepspeed") == "/runs/r/ds_config.json"
    assert (_opt(train, "--sync_to"), _opt(train, "--resume"), _opt(train, "--s3_endpoint_url")) == (
        "s3://bkt/runs", "auto", "http://s3:8333")  # fmt: skip
    assert _opt(train, "--learning_rate") == "1.2e-05" and _opt(train, "--save_strategy") == "epoch"
    (ev,) = stages[1].commands
    assert ev[1:4] == ["-m", "qa_train", "eval"]
    assert _opt(ev, "--model_path") == "/runs/r/model"
    assert (_opt(ev, "--sync_to"), _opt(ev, "--run_name")) == ("s3://bkt/runs", "r")


def test_several_gpus_without_zero_train_one_process_per_gpu_with_torchrun():
    """A plan of 2 GPUs without DeepSpeed (DDP: LoRA / QLoRA) starts one rank per GPU, not one process."""
    r = render(mistral(use_lora=True, lora={"r": 8, "alpha": 16, "dropout": 0.0}), "a100")
    plan = r.plan.model_copy(update={"launcher": "python", "num_gpus": 2})
    (train,) = build_stages(r.job, plan)[0].commands
    assert train[:7] == [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
    ]
    assert train[7:9] == ["qa_train", "train"] and "--deepspeed" not in train
    one = r.plan.model_copy(update={"launcher": "python", "num_gpus": 1})
    assert build_stages(r.job, one)[0].commands[0][1:4] == ["-m", "qa_train", "train"]


def test_lora_job_merges_the_train_output_then_evaluates_the_merge():
    r = render(mistral(use_lora=True, lora={"r": 8, "alpha": 16, "dropout": 0.0}, eval={"limit": 8}), "a100")
    train, merge, ev = build_stages(r.job, r.plan)
    assert train.commands[0][1:4] == ["-m", "qa_train", "train"]
    assert (
        _opt(_argv(train.steps[0]), "--lora_r") == "8" and _opt(_argv(train.steps[0]), "--use_lora") == "True"
    )
    m = merge.commands[0]
    assert m[1:4] == ["-m", "qa_train", "merge"]
    assert (_opt(m, "--save_folder"), _opt(m, "--pretrained_path"), _opt(m, "--checkpoint")) == (
        "/runs/r/merged", "mistralai/Mistral-7B-v0.1", "/runs/r/model")  # fmt: skip
    assert _opt(ev.commands[0], "--model_path") == "/runs/r/merged" and _opt(ev.commands[0], "--limit") == "8"
    push = merge.commands[1]  # the merged model lands in object storage beside the checkpoints
    assert push[1:4] == ["-m", "qa_train", "sync"] and _opt(push, "--endpoint_url") == "http://s3:8333"
    assert push[push.index("push") + 1 :][:2] == ["/runs/r/merged", "s3://bkt/runs/r/merged"]


def run_cli(args: list[str], env_extra: dict[str, str] | None = None, timeout: int = 300):
    env = {**os.environ, **(env_extra or {})}
    env.pop("QA_JOB_SPEC", None) if env_extra is None or "QA_JOB_SPEC" not in env_extra else None
    return subprocess.run([sys.executable, "-m", "qa_train", "run", *args], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=timeout)  # fmt: skip


@pytest.mark.slow
def test_missing_data_file_fails_the_train_stage_by_name(tmp_path, tiny_llama):
    job = {"run_name": "broken", "model": {"name_or_path": str(tiny_llama)}, "use_lora": True,
           "data": {"train_path": str(tmp_path / "missing.json"), "hotpot_qa_dev_path": str(tmp_path / "h.json")},
           "training": {"max_steps": 1, "model_max_length": 256, "bf16": False, "tf32": False},
           "output_root": str(tmp_path / "out")}  # fmt: skip
    spec = tmp_path / "job.json"
    spec.write_text(json.dumps(job))
    p = run_cli(["--spec", str(spec)])
    assert p.returncode != 0
    assert "error: stage 'train' failed (exit" in p.stderr
    assert "missing.json" in p.stderr  # the train CLI named the file
    summary = json.loads((tmp_path / "out" / "broken" / "run_summary.json").read_text())
    assert [s["stage"] for s in summary["stages"]] == ["train"] and not summary["ok"]  # merge/eval never ran
    assert "stage 'merge' starting" not in p.stderr


def test_broken_spec_in_env_gives_the_validation_message():
    p = run_cli([], {"QA_JOB_SPEC": json.dumps({"run_name": "x", "model": {"name_or_path": "m"},
                                                 "data": {"train_path": "t"}, "training": {"lr": 1}})})  # fmt: skip
    assert p.returncode == 2
    assert "$QA_JOB_SPEC: training.lr: unknown key" in p.stderr
    p = run_cli([])
    assert p.returncode == 2 and "QA_JOB_SPEC" in p.stderr


def test_rendered_spec_from_env_writes_the_deepspeed_config(tmp_path):
    job = mistral(output_root=str(tmp_path), stages=["train"], sync=None)
    r = render(job, "a6000", job_id="j")
    p = run_cli(["--print_plan"], {"QA_JOB_SPEC": json.dumps(r.model_dump(mode="json"))})
    assert p.returncode == 0, p.stderr
    plan = json.loads(p.stdout)
    assert _opt(plan[0]["commands"][0], "--deepspeed") == f"{tmp_path}/r/ds_config.json"
    # the train arguments travel in a file: the plan shows what it will hold, not only its path
    (args_path,) = [a for a in plan[0]["commands"][0] if a.endswith("train_args.json")]
    assert plan[0]["files"][args_path]["learning_rate"] == job.training.learning_rate
    assert plan[0]["files"][args_path]["model_name_or_path"] == job.model.name_or_path


def test_stage_failure_stops_later_stages(tmp_path):
    """A fake interpreter that fails only 'merge': train ran, merge failed by name, eval never started."""
    from qa_train.entrypoint.runner import run_stages
    from qa_train.entrypoint.stages import Stage, Step

    ok = [sys.executable, "-c", "print('train ok')"]
    bad = [sys.executable, "-c", "import sys; print('merging'); sys.exit(3)"]
    never = [sys.executable, "-c", f"open({str(tmp_path / 'eval-ran')!r}, 'w')"]
    code = run_stages(
        [Stage("train", [Step(ok)]), Stage("merge", [Step(bad)]), Stage("eval", [Step(never)])],
        tmp_path / "s.json",
    )
    assert code == 3 and not (tmp_path / "eval-ran").exists()
    assert [s["exit_code"] for s in json.loads((tmp_path / "s.json").read_text())["stages"]] == [0, 3]


@pytest.mark.slow
def test_tiny_end_to_end_train_merge_eval(tmp_path, records_file, validation_file, hotpot_file):
    """The smoke pipeline on the host: build a tiny model, LoRA-train a few packed steps, merge, eval 8."""
    job = {"run_name": "e2e", "model": {"make_tiny": {"arch": "llama", "vocab_size": 400, "hidden_size": 32}},
           "data": {"train_path": str(records_file), "validation_path": str(validation_file),
                    "hotpot_qa_dev_path": str(hotpot_file)},
           "training": {"max_steps": 2, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 1,
                        "eval_steps": 2, "save_strategy": "no", "model_max_length": 512,
                        "gradient_checkpointing": False, "learning_rate": 1e-3, "bf16": False, "tf32": False},
           "use_lora": True, "packing": True, "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
           "eval": {"limit": 8, "batch_size": 8}, "output_root": str(tmp_path)}  # fmt: skip
    spec = tmp_path / "job.json"
    spec.write_text(json.dumps(job))
    p = run_cli([str(spec)], timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    run = tmp_path / "e2e"
    assert (run / "model" / "train_summary.json").exists()
    assert (run / "merged" / "config.json").exists()
    summaries = list((run / "eval").glob("*summary*.json"))
    assert summaries, sorted(x.name for x in (run / "eval").iterdir())
    assert json.loads(summaries[0].read_text())["num_questions"] == 8
    assert json.loads((run / "run_summary.json").read_text())["ok"]
