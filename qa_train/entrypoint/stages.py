"""Stages as data: what each stage of a job spec runs, built without running or writing anything."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from qa_train.contract import FINAL, MERGED, STAGE_OUTPUTS
from qa_train.entrypoint.commands import _deepspeed_cmd, _torchrun_cmd, eval_python
from qa_train.entrypoint.flags import train_flags
from qa_train.nodes import NodeEnv, detect, group_train_command
from qa_train.spec import JobSpec, Plan


@dataclass
class Stage:
    name: str
    commands: list[list[str]]
    skip_if_exists: list[str | None] = field(default_factory=list)  # per command: skip when this path exists
    # Python work instead of commands (the inputs stage): returns (exit code, error line or None)
    action: Callable[[], tuple[int, str | None]] | None = None
    # with sync: the committed folder that proves this stage done, and (folder, local dir, proof file) it needs
    # locally when an earlier stage was skipped on a fresh disk
    output: str | None = None
    needs: list[tuple[str, str, str]] = field(default_factory=list)


def build_stages(job: JobSpec, plan: Plan, ds_config_path: str | None = None) -> list[Stage]:
    """The commands of each stage, in order (pure: nothing runs, nothing is written)."""
    py = [sys.executable, "-m", "qa_train"]
    stages: list[Stage] = []
    assert job.stages is not None
    for name in job.stages:
        if name == "train":
            cmds: list[list[str]] = []
            skips: list[str | None] = []
            if job.model.make_tiny is not None:
                t = job.model.make_tiny
                cmds.append([*py, "make-tiny-model", job.tiny_model_dir(), "--arch", t.arch,
                             "--data", t.data or job.data.train_path, "--vocab_size", str(t.vocab_size),
                             "--hidden_size", str(t.hidden_size), "--num_layers", str(t.num_layers),
                             "--max_positions", str(max(job.training.model_max_length, 128)), "--seed", str(t.seed)])  # fmt: skip
                skips.append(f"{job.tiny_model_dir()}/config.json")  # a relaunch reuses it (same tokenizer)
            if job.model.make_demo is not None:
                demo = [*py, "make-demo-model", job.demo_model_dir()]
                if job.model.make_demo.cache_dir:
                    demo += ["--cache_dir", job.model.make_demo.cache_dir]
                cmds.append(demo)
                skips.append(f"{job.demo_model_dir()}/qa_train_complete.json")  # published whole, marker last
            ds_flags = (
                ["--deepspeed", ds_config_path] if ds_config_path and plan.launcher == "deepspeed" else []
            )
            group = group_train_command(
                sys.executable, os.environ, plan.num_gpus, train_flags(job, plan) + ds_flags
            )
            if group is not None:  # one node of a multi-node group (qa_train/nodes.py)
                cmds.append(group)
            elif plan.launcher == "deepspeed":
                if not ds_config_path:
                    raise ValueError("a deepspeed plan needs the config path")
                cmds.append(
                    [*_deepspeed_cmd(plan.num_gpus), *train_flags(job, plan), "--deepspeed", ds_config_path]
                )
            elif plan.num_gpus > 1:  # DDP (LoRA / QLoRA without ZeRO): one process per GPU
                cmds.append([*_torchrun_cmd(plan.num_gpus), *train_flags(job, plan)])
            else:
                cmds.append([*py, "train", *train_flags(job, plan)])
            skips.append(None)
            stages.append(Stage("train", cmds, skips, output=STAGE_OUTPUTS["train"] if job.sync else None))
        elif name == "merge":
            cmd = [*py, "merge", "--save_folder", job.merged_dir(), "--pretrained_path", job.base_model(),
                   "--checkpoint", job.train_output_dir()]  # fmt: skip
            if job.model.model_type:
                cmd += ["--model_type", job.model.model_type]
            merge_cmds = [cmd]
            if job.sync:  # the merged model lands beside the checkpoints: <target>/<run_name>/merged/
                push = [*py, "sync"]
                if job.sync.endpoint_url:
                    push += ["--endpoint_url", job.sync.endpoint_url]
                dest = f"{job.sync.target.rstrip('/')}/{job.run_name}/merged"
                merge_cmds.append([*push, "push", job.merged_dir(), dest, "--no_progress"])
            stages.append(
                Stage(
                    "merge",
                    merge_cmds,
                    [None] * len(merge_cmds),
                    output=STAGE_OUTPUTS["merge"] if job.sync else None,
                    needs=[(FINAL, job.train_output_dir(), "train_summary.json")] if job.sync else [],
                )
            )
        elif name == "eval":
            if job.use_lora:
                model_path = job.merged_dir()
            elif "train" in job.stages:
                model_path = job.train_output_dir()
            else:
                model_path = job.base_model()
            epy = [eval_python(job.eval.inference_type), "-m", "qa_train"]  # vllm: the image's eval venv
            cmd = [*epy, "eval", "--model_path", model_path, "--hotpot_qa_dev_path", str(job.data.hotpot_qa_dev_path),
                   "--inference_type", job.eval.inference_type, "--save_path", job.eval_save_path(),
                   "--batch_size", str(job.eval.batch_size)]  # fmt: skip
            if job.eval.limit is not None:
                cmd += ["--limit", str(job.eval.limit)]
            eval_cmds, eval_skips = [cmd], [None]
            if job.eval.compare_base and model_path != job.base_model():
                # before/after on the same questions: the base first, then a side-by-side table
                base = list(cmd)  # local only: the synced eval/ folder holds the fine-tuned model's outputs
                base[base.index("--model_path") + 1] = job.base_model()
                base[base.index("--save_path") + 1] = job.base_eval_save_path()
                compare = [sys.executable, "-c", "import sys; from qa_train.demo_model import compare_main; "
                           "sys.exit(compare_main(sys.argv[1:]))", job.base_eval_save_path(), job.eval_save_path()]  # fmt: skip
                eval_cmds, eval_skips = [base, cmd, compare], [None, None, None]
            if job.sync:
                cmd += ["--sync_to", job.sync.target, "--run_name", job.run_name]
                if job.sync.endpoint_url:
                    cmd += ["--s3_endpoint_url", job.sync.endpoint_url]
            needs: list[tuple[str, str, str]] = []
            if job.sync and model_path == job.merged_dir():
                needs = [(MERGED, model_path, "config.json")]
            elif job.sync and model_path == job.train_output_dir():
                needs = [(FINAL, model_path, "train_summary.json")]
            stages.append(
                Stage(
                    "eval",
                    eval_cmds,
                    eval_skips,
                    output=STAGE_OUTPUTS["eval"] if job.sync else None,
                    needs=needs,
                )
            )
    node = group_node(plan)
    if node is not None and node.node_rank > 0:  # node 0 alone runs merge / eval and writes the report
        stages = [s for s in stages if s.name == "train"]
    return stages


def group_node(plan: Plan, env: dict[str, str] | os._Environ[str] | None = None) -> NodeEnv | None:
    """This node of a multi-node group (qa_train/nodes.py), None on one machine."""
    node = detect(os.environ if env is None else env, plan.num_gpus)
    return node if node is not None and node.nnodes > 1 else None
