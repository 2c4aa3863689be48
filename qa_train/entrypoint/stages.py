"""Stages as data: what each stage of a job spec runs, built without running or writing anything.

One small builder per stage name (``BUILDERS``); a stage is a list of :class:`Step` objects, each one command
with its own skip rule, so nothing has to be kept in step across parallel lists.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from qa_train.contract import FINAL, MERGED, STAGE_OUTPUTS
from qa_train.entrypoint.commands import deepspeed_cmd, eval_python, qa_train_cmd, torchrun_cmd
from qa_train.nodes import NodeEnv, detect, group_train_command
from qa_train.spec import JobSpec, Plan
from qa_train.train_config import train_args_file


@dataclass(frozen=True)
class Step:
    """One command of a stage. ``skip_if``: a path whose existence proves the step done (a relaunch reuses
    it); such a step is idempotent preparation, run even when its stage is skipped and a later one needs it."""

    argv: list[str]
    skip_if: str | None = None
    # (path, text) the command reads, written just before it runs: the train arguments (qa_train/train_config.py)
    files: tuple[tuple[str, str], ...] = ()


class Need(NamedTuple):
    """A committed folder a stage needs locally when the stage that made it was skipped on a fresh disk."""

    folder: str  # the committed folder in storage (final, merged)
    local: str  # where the stage reads it
    proof: str  # a file whose presence in ``local`` means it is already there


@dataclass
class Stage:
    name: str
    steps: list[Step] = field(default_factory=list)
    # Python work instead of commands (the inputs stage): returns (exit code, error line or None)
    action: Callable[[], tuple[int, str | None]] | None = None
    # with sync: the committed folder that proves this stage done
    output: str | None = None
    needs: list[Need] = field(default_factory=list)

    @property
    def commands(self) -> list[list[str]]:
        """Every step's argv, in order (``--print_plan`` shows these)."""
        return [s.argv for s in self.steps]

    @property
    def files(self) -> dict[str, str]:
        """What the steps write just before they run, by path (``--print_plan`` shows these too: the train
        arguments are in a file, not on the command line)."""
        return {path: text for s in self.steps for path, text in s.files}


def _tiny_model_step(job: JobSpec) -> Step:
    t = job.model.make_tiny
    assert t is not None
    argv = qa_train_cmd(
        "make-tiny-model",
        job.tiny_model_dir(),
        "--arch",
        t.arch,
        "--data",
        t.data or job.data.train_path,
        "--vocab_size",
        str(t.vocab_size),
        "--hidden_size",
        str(t.hidden_size),
        "--num_layers",
        str(t.num_layers),
        "--max_positions",
        str(max(job.training.model_max_length, 128)),
        "--seed",
        str(t.seed),
    )
    return Step(argv, skip_if=f"{job.tiny_model_dir()}/config.json")  # a relaunch reuses it (same tokenizer)


def _demo_model_step(job: JobSpec) -> Step:
    assert job.model.make_demo is not None
    argv = qa_train_cmd("make-demo-model", job.demo_model_dir())
    if job.model.make_demo.cache_dir:
        argv += ["--cache_dir", job.model.make_demo.cache_dir]
    return Step(
        argv, skip_if=f"{job.demo_model_dir()}/qa_train_complete.json"
    )  # published whole, marker last


def _train_argv(plan: Plan, ds_config_path: str | None, args_path: str) -> list[str]:
    """One process, DDP (torchrun), deepspeed, or this node's part of a multi-node group; each runs
    ``qa_train train ARGS.json`` (``--deepspeed`` after it)."""
    ds_flags = ["--deepspeed", ds_config_path] if ds_config_path and plan.launcher == "deepspeed" else []
    args = [args_path, *ds_flags]
    group = group_train_command(sys.executable, os.environ, plan.num_gpus, args)
    if group is not None:  # one node of a multi-node group (qa_train/nodes.py)
        return group
    if plan.launcher == "deepspeed":
        if not ds_config_path:
            raise ValueError("a deepspeed plan needs the config path")
        return [*deepspeed_cmd(plan.num_gpus), *args]
    if plan.num_gpus > 1:  # DDP (LoRA / QLoRA without ZeRO): one process per GPU
        return [*torchrun_cmd(plan.num_gpus), *args]
    return qa_train_cmd("train", *args)


def train_stage(job: JobSpec, plan: Plan, ds_config_path: str | None) -> Stage:
    steps = [_tiny_model_step(job)] if job.model.make_tiny is not None else []
    steps += [_demo_model_step(job)] if job.model.make_demo is not None else []
    args_path, args_text = train_args_file(job, plan)
    steps.append(Step(_train_argv(plan, ds_config_path, args_path), files=((args_path, args_text),)))
    return Stage("train", steps, output=STAGE_OUTPUTS["train"] if job.sync else None)


def _push_merged_step(job: JobSpec) -> Step:
    """The merged model lands beside the checkpoints: ``<target>/<run_name>/merged/``."""
    assert job.sync is not None
    argv = qa_train_cmd("sync")
    if job.sync.endpoint_url:
        argv += ["--endpoint_url", job.sync.endpoint_url]
    dest = f"{job.sync.target.rstrip('/')}/{job.run_name}/merged"
    return Step([*argv, "push", job.merged_dir(), dest, "--no_progress"])


def merge_stage(job: JobSpec, plan: Plan, ds_config_path: str | None) -> Stage:
    argv = qa_train_cmd(
        "merge",
        "--save_folder",
        job.merged_dir(),
        "--pretrained_path",
        job.base_model(),
        "--checkpoint",
        job.train_output_dir(),
    )
    if job.model.model_type:
        argv += ["--model_type", job.model.model_type]
    if not job.sync:
        return Stage("merge", [Step(argv)])
    return Stage(
        "merge",
        [Step(argv), _push_merged_step(job)],
        output=STAGE_OUTPUTS["merge"],
        needs=[Need(FINAL, job.train_output_dir(), "train_summary.json")],
    )


def eval_model_path(job: JobSpec) -> str:
    """The merged model (LoRA / QLoRA), else train's output when this job trains, else the base model."""
    if job.use_lora:
        return job.merged_dir()
    if "train" in (job.stages or []):
        return job.train_output_dir()
    return job.base_model()


def _eval_argv(job: JobSpec, model_path: str, save_path: str) -> list[str]:
    argv = qa_train_cmd(
        "eval",
        "--model_path",
        model_path,
        "--hotpot_qa_dev_path",
        str(job.data.hotpot_qa_dev_path),
        "--inference_type",
        job.eval.inference_type,
        "--save_path",
        save_path,
        "--batch_size",
        str(job.eval.batch_size),
        python=eval_python(job.eval.inference_type),
    )  # vllm: the image's eval venv
    if job.eval.limit is not None:
        argv += ["--limit", str(job.eval.limit)]
    return argv


def _eval_sync_flags(job: JobSpec) -> list[str]:
    if not job.sync:
        return []
    flags = ["--sync_to", job.sync.target, "--run_name", job.run_name]
    return flags + (["--s3_endpoint_url", job.sync.endpoint_url] if job.sync.endpoint_url else [])


def _eval_needs(job: JobSpec, model_path: str) -> list[Need]:
    if job.sync and model_path == job.merged_dir():
        return [Need(MERGED, model_path, "config.json")]
    if job.sync and model_path == job.train_output_dir():
        return [Need(FINAL, model_path, "train_summary.json")]
    return []


def eval_stage(job: JobSpec, plan: Plan, ds_config_path: str | None) -> Stage:
    model_path = eval_model_path(job)
    tuned = Step(_eval_argv(job, model_path, job.eval_save_path()) + _eval_sync_flags(job))
    steps = [tuned]
    if job.eval.compare_base and model_path != job.base_model():
        # before/after on the same questions: the base first (local only: the synced eval/ folder holds the
        # fine-tuned model's outputs), then a side-by-side table
        base = Step(_eval_argv(job, job.base_model(), job.base_eval_save_path()))
        compare = Step(qa_train_cmd("compare-eval", job.base_eval_save_path(), job.eval_save_path()))
        steps = [base, tuned, compare]
    output = STAGE_OUTPUTS["eval"] if job.sync else None
    return Stage("eval", steps, output=output, needs=_eval_needs(job, model_path))


StageBuilder = Callable[[JobSpec, Plan, "str | None"], Stage]
BUILDERS: dict[str, StageBuilder] = {"train": train_stage, "merge": merge_stage, "eval": eval_stage}


def build_stages(job: JobSpec, plan: Plan, ds_config_path: str | None = None) -> list[Stage]:
    """The commands of each stage, in order (pure: nothing runs, nothing is written)."""
    assert job.stages is not None
    stages = [BUILDERS[name](job, plan, ds_config_path) for name in job.stages]
    node = group_node(plan)
    if node is not None and node.node_rank > 0:  # node 0 alone runs merge / eval and writes the report
        stages = [s for s in stages if s.name == "train"]
    return stages


def group_node(plan: Plan, env: dict[str, str] | os._Environ[str] | None = None) -> NodeEnv | None:
    """This node of a multi-node group (qa_train/nodes.py), None on one machine."""
    node = detect(os.environ if env is None else env, plan.num_gpus)
    return node if node is not None and node.nnodes > 1 else None
