"""``python -m qa_train run [SPEC | --spec PATH]``: execute a job spec's stages in order inside the container.

The spec is a job YAML/JSON file, a rendered spec (``runs/<job_id>/spec.json``), or — with no argument — the
rendered spec JSON in env ``QA_JOB_SPEC`` (how every launcher backend passes it). Stages run as subprocesses
(train: ``python -m qa_train train …`` or ``deepspeed --num_gpus N --module qa_train train … --deepspeed
cfg.json``; merge for LoRA/QLoRA; eval) with their output streamed as it comes; the first failing stage stops
the run with its name and exit status. Imports nothing heavy: the stages do the work.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from qa_train.spec import JobSpec, Plan, RenderedSpec, SpecError, load_any

logger = logging.getLogger("qa_train.run")
ENV_VAR = "QA_JOB_SPEC"


@dataclass
class Stage:
    name: str
    commands: list[list[str]]
    skip_if_exists: list[str | None] = field(default_factory=list)  # per command: skip when this path exists


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


def _deepspeed_cmd(num_gpus: int) -> list[str]:
    exe = shutil.which("deepspeed")
    head = [exe] if exe else [sys.executable, "-m", "deepspeed.launcher.runner"]
    return [*head, "--num_gpus", str(max(num_gpus, 1)), "--module", "qa_train", "train"]


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
            if plan.launcher == "deepspeed":
                if not ds_config_path:
                    raise ValueError("a deepspeed plan needs the config path")
                cmds.append(
                    [*_deepspeed_cmd(plan.num_gpus), *train_flags(job, plan), "--deepspeed", ds_config_path]
                )
            else:
                cmds.append([*py, "train", *train_flags(job, plan)])
            skips.append(None)
            stages.append(Stage("train", cmds, skips))
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
            stages.append(Stage("merge", merge_cmds, [None] * len(merge_cmds)))
        elif name == "eval":
            if job.use_lora:
                model_path = job.merged_dir()
            elif "train" in job.stages:
                model_path = job.train_output_dir()
            else:
                model_path = job.base_model()
            cmd = [*py, "eval", "--model_path", model_path, "--hotpot_qa_dev_path", str(job.data.hotpot_qa_dev_path),
                   "--inference_type", job.eval.inference_type, "--save_path", job.eval_save_path(),
                   "--batch_size", str(job.eval.batch_size)]  # fmt: skip
            if job.eval.limit is not None:
                cmd += ["--limit", str(job.eval.limit)]
            if job.sync:
                cmd += ["--sync_to", job.sync.target, "--run_name", job.run_name]
                if job.sync.endpoint_url:
                    cmd += ["--s3_endpoint_url", job.sync.endpoint_url]
            stages.append(Stage("eval", [cmd], [None]))
    return stages


class _Child:
    """Forward SIGTERM/SIGINT (``docker stop``, a cloud shutting down) to the running stage."""

    proc: subprocess.Popen | None = None

    @classmethod
    def handler(cls, signum: int, _frame: object) -> None:
        if cls.proc is not None and cls.proc.poll() is None:
            cls.proc.send_signal(signum)
        raise SystemExit(128 + signum)


def run_stages(stages: list[Stage], summary_path: Path | None = None) -> int:
    results = []
    code = 0
    for stage in stages:
        t0 = time.monotonic()
        print(f"[run] stage '{stage.name}' starting", file=sys.stderr, flush=True)
        stage_code = 0
        for cmd, skip in zip(
            stage.commands, stage.skip_if_exists or [None] * len(stage.commands), strict=False
        ):
            if skip and Path(skip).exists():
                print(
                    f"[run] {skip} exists; skipping {cmd[3] if len(cmd) > 3 else cmd[0]}",
                    file=sys.stderr,
                    flush=True,
                )
                continue
            print(
                "[run] $ " + " ".join(cmd), file=sys.stderr, flush=True
            )  # holds no secret: those are env only
            try:
                _Child.proc = subprocess.Popen(cmd)  # inherits stdout/stderr: output streams as it comes
            except OSError as e:
                print(f"[run] cannot start {cmd[0]}: {e}", file=sys.stderr)
                stage_code = 127
                break
            stage_code = _Child.proc.wait()
            _Child.proc = None
            if stage_code != 0:
                break
        secs = round(time.monotonic() - t0, 1)
        results.append({"stage": stage.name, "exit_code": stage_code, "seconds": secs})
        if stage_code != 0:
            print(f"error: stage '{stage.name}' failed (exit {stage_code})", file=sys.stderr, flush=True)
            code = stage_code if 0 < stage_code < 256 else 1
            break
        print(f"[run] stage '{stage.name}' done in {secs}s", file=sys.stderr, flush=True)
    summary = {"ok": code == 0, "stages": results}
    if summary_path is not None:
        try:
            summary_path.parent.mkdir(parents=True, exist_ok=True)
            summary_path.write_text(json.dumps(summary, indent=2) + "\n")
        except OSError as e:
            logger.warning("could not write %s: %s", summary_path, e)
    print(json.dumps(summary), flush=True)
    return code


def load_spec(path: str | None) -> RenderedSpec | JobSpec:
    if path:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as e:
            raise SpecError(f"{p}: cannot read job spec: {e.strerror}") from None
        return load_any(text, str(p))
    text = os.environ.get(ENV_VAR)
    if not text:
        raise SpecError(f"no job spec: pass a path, --spec PATH, or the spec JSON in env {ENV_VAR}")
    return load_any(text, f"${ENV_VAR}")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m qa_train run", description=__doc__.split("\n\n")[0])
    p.add_argument("spec_path", nargs="?", default=None, help="job YAML/JSON or rendered spec.json")
    p.add_argument("--spec", dest="spec_opt", default=None, help="same as the positional SPEC")
    p.add_argument("--output_root", default=None, help="override the spec's output_root (where outputs go)")
    p.add_argument("--print_plan", action="store_true", help="print the stage commands as JSON and exit")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        spec = load_spec(a.spec_opt or a.spec_path)
    except SpecError as e:
        print(f"error: invalid job spec:\n{e}", file=sys.stderr)
        return 2
    if isinstance(spec, RenderedSpec):
        job, plan, ds = spec.job, spec.plan, spec.deepspeed
    else:
        job, plan, ds = spec, default_plan(spec), None
    if a.output_root:
        job = job.model_copy(update={"output_root": a.output_root})
    run_dir = Path(job.run_dir())
    ds_path = str(run_dir / "ds_config.json") if plan.launcher == "deepspeed" else None
    stages = build_stages(job, plan, ds_path)
    if a.print_plan:
        print(json.dumps([{"stage": s.name, "commands": s.commands} for s in stages], indent=2))
        return 0
    if plan.launcher == "deepspeed":
        if ds is None:
            print(
                "error: invalid job spec: plan.launcher is deepspeed but the spec has no deepspeed config",
                file=sys.stderr,
            )
            return 2
        run_dir.mkdir(parents=True, exist_ok=True)
        Path(ds_path).write_text(json.dumps(ds, indent=2))  # type: ignore[arg-type]
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _Child.handler)
    return run_stages(stages, run_dir / "run_summary.json")
