"""``python -m qa_train run [SPEC | --spec PATH]``: execute a job spec's stages in order inside the container.

The spec is a job YAML/JSON file, a rendered spec (``runs/<job_id>/spec.json``), or — with no argument — the
rendered spec JSON in env ``QA_JOB_SPEC`` (local backend) or its ``s3://…/spec.json`` URI in ``QA_JOB_SPEC_URI``
(cloud backends: clouds cap env values). Inputs given as s3:// / https:// / hf:// URIs are fetched first (stage
``inputs``). Stages run as subprocesses (train: ``python -m qa_train train …`` or ``deepspeed --num_gpus N
--module qa_train train … --deepspeed cfg.json``; merge for LoRA/QLoRA; eval) with their output streamed as it
comes; the first failing stage stops the run with its name and exit status.

The run report (``qa_train.contract.RunReport``) is rewritten at every change: ``<run_dir>/report.json`` and,
with ``sync``, ``<target>/<run_name>/report.json`` — the launcher decides from it, never from log lines. A stage
whose output an earlier launch already committed (final/, merged/, eval/) is skipped. When the report is final
the instance stops itself on vast/RunPod (``qa_train.instance_stop``). Imports nothing heavy: stages do the work.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qa_train.contract import (
    ENV_BACKEND,
    ENV_SPEC,
    ENV_SPEC_URI,
    FINAL,
    MERGED,
    REPORT_NAME,
    STAGE_OUTPUTS,
    TB,
    RunLayout,
    RunReport,
    RunState,
    StageResult,
)
from qa_train.fsutil import atomic_write_text
from qa_train.nodes import NodeEnv, NodeEnvError, detect, group_train_command
from qa_train.spec import JobSpec, Plan, RenderedSpec, SpecError, load_any
from qa_train.storage import RunStore

logger = logging.getLogger("qa_train.run")
ENV_VAR = ENV_SPEC
ENV_REPORT_INTERVAL = "QA_REPORT_INTERVAL"  # seconds between committed-step checks during train (default 30)
EXIT_STORAGE = 3


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


def _deepspeed_cmd(num_gpus: int) -> list[str]:
    exe = shutil.which("deepspeed")
    head = [exe] if exe else [sys.executable, "-m", "deepspeed.launcher.runner"]
    return [*head, "--num_gpus", str(max(num_gpus, 1)), "--module", "qa_train", "train"]


def _torchrun_cmd(num_gpus: int) -> list[str]:
    """One node, ``num_gpus`` ranks (torchrun's standalone rendezvous picks a free port)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(num_gpus),
            "-m", "qa_train", "train"]  # fmt: skip


# The GPU image's eval venv: vLLM pins its own torch, so it lives beside the training venv (docker/README.md).
EVAL_VENV_PYTHON = "/opt/eval-venv/bin/python"


def eval_python(inference_type: str) -> str:
    """The interpreter for the eval stage: with ``vllm``, ``$QA_EVAL_PYTHON`` or the image's eval venv when it
    exists; otherwise (and always for ``hf``) this interpreter, so a CPU run with ``vllm`` still gets the
    backend's clear "needs a GPU/vllm" error."""
    if inference_type == "vllm":
        for cand in (os.environ.get("QA_EVAL_PYTHON"), EVAL_VENV_PYTHON):
            if cand and os.path.isfile(cand) and os.access(cand, os.X_OK):
                return cand
    return sys.executable


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


class _Child:
    """Forward SIGTERM/SIGINT (``docker stop``, a cloud shutting down) to the running stage, then let it use
    the grace period.

    The stage runs in its own process group and the signal goes to the whole group: the deepspeed launcher
    does not pass SIGTERM on to its ranks, and every rank must take part in a ZeRO-3 save. The train stage
    then saves and commits a checkpoint if that fits its ``--sigterm_grace_s`` (the upload worker ignores the
    signal). This process waits for every process of the group to end and only then exits (``SystemExit``:
    the report stays ``running``); it never kills the stage itself before the grace ends — docker / the cloud
    SIGKILLs what is left then. A second signal escalates to SIGKILL (a user pressing ^C twice).
    """

    proc: subprocess.Popen | None = None
    signalled: int | None = None
    GROUP_WAIT_S = (
        600.0  # upper bound outside a container (inside, the SIGKILL at the grace's end comes first)
    )

    @classmethod
    def handler(cls, signum: int, _frame: object) -> None:
        first = cls.signalled is None
        cls.signalled = signum
        if cls.proc is not None and cls.proc.poll() is None:
            try:
                os.killpg(cls.proc.pid, signum if first else signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            if first:
                print(f"[run] signal {signum}: forwarded to the stage; waiting for it to end", file=sys.stderr,
                      flush=True)  # fmt: skip
            return  # the main thread's wait() returns when the stage has ended
        raise SystemExit(128 + signum)

    @classmethod
    def wait_group(cls, pgid: int) -> None:
        """Until no process of the stage's group is left (reaping the ones re-parented to us as PID 1)."""
        deadline = time.monotonic() + cls.GROUP_WAIT_S
        while time.monotonic() < deadline:
            try:
                while os.waitpid(-1, os.WNOHANG)[0] > 0:
                    pass
            except ChildProcessError:
                pass
            try:
                os.killpg(pgid, 0)
            except (ProcessLookupError, PermissionError):
                return
            time.sleep(0.1)


def instance_id(env: dict[str, str] | os._Environ[str] | None = None) -> str:
    env = os.environ if env is None else env
    return env.get("CONTAINER_ID") or env.get("RUNPOD_POD_ID") or env.get("HOSTNAME") or socket.gethostname()


class Reporter:
    """Keeps ``report.json`` current: locally (atomic rename) always, in object storage (one PUT) with sync.

    A storage hiccup while writing the report is a warning, never a failed run: the stages themselves fail
    when storage is really gone. Thread-safe (the committed-step watcher writes from its own thread).
    """

    def __init__(
        self,
        job: JobSpec,
        run_dir: Path,
        env: dict[str, str] | os._Environ[str] | None = None,
        node: NodeEnv | None = None,
    ):
        env = os.environ if env is None else env
        # a multi-node group: node 0 owns the shared report.json; another node keeps its report local and
        # writes only its train outcome (qa_train.node_status) for node 0 to read
        self.node = node
        self.shared = node is None or node.node_rank == 0
        self.local_path = run_dir / REPORT_NAME
        self.store = (
            RunStore(RunLayout.of(job.sync.target, job.run_name), job.sync.endpoint_url) if job.sync else None
        )
        self._lock = threading.RLock()
        self._warned: set[str] = set()
        self._stop_watch = threading.Event()
        self._watcher: threading.Thread | None = None
        # run before the final report.json is published: the controller destroys the instance once it reads
        # a final report, so anything uploaded after that (the HTML run report) could be cut off
        self.before_final: Callable[[], None] | None = None
        prev = self._previous()
        self.report = RunReport(
            run_name=job.run_name,
            instance_id=instance_id(env),
            backend=env.get(ENV_BACKEND) or None,
            launch=prev.launch + 1 if prev else 1,
            last_committed_step=prev.last_committed_step if prev else None,
            inputs=prev.inputs if prev else None,
        )
        # train's input fingerprints (qa_train.fingerprint) and its checkpoints still waiting for upload
        self._train_dir = Path(job.train_output_dir())
        if node is not None:
            from qa_train.node_status import group_fields

            self.report.group = group_fields(node)
        self._train_started: float | None = None
        self.write()

    def _warn_once(self, what: str, exc: BaseException) -> None:
        if what not in self._warned:
            self._warned.add(what)
            print(f"[run] warning: {what}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)

    def _previous(self) -> RunReport | None:
        found: list[RunReport] = []
        if self.store is not None:
            try:
                if (r := self.store.read_report()) is not None:
                    found.append(r)
            except Exception as e:  # noqa: BLE001 - unreadable or unreachable: count from the local copy
                self._warn_once(f"cannot read the previous report {self.store.layout.report}", e)
        try:
            found.append(RunReport.from_json(self.local_path.read_text(), str(self.local_path)))
        except (OSError, ValueError):
            pass
        return max(found, key=lambda r: r.launch) if found else None

    def write(self, upload: bool = True) -> None:
        with self._lock:
            self.report.updated_at = time.time()
            text = self.report.to_json()
            try:
                atomic_write_text(self.local_path, text)
            except OSError as e:
                self._warn_once(f"cannot write {self.local_path}", e)
            if upload and self.shared and self.store is not None:
                try:
                    self.store.put_text(REPORT_NAME, text)
                except Exception as e:  # noqa: BLE001 - see the class docstring
                    self._warn_once(f"cannot write {self.store.layout.report}", e)

    def committed(self) -> set[str]:
        """Folders an earlier launch committed (empty without sync or when storage cannot be listed)."""
        if self.store is None:
            return set()
        try:
            return self.store.committed()
        except Exception as e:  # noqa: BLE001 - then every stage runs again (train resumes from storage)
            self._warn_once(f"cannot list {self.store.layout.root}; no stage is skipped", e)
            return set()

    def refresh_inputs(self) -> None:
        """The report carries the input fingerprints train recorded (``output_dir/inputs.json``)."""
        from qa_train.fingerprint import read_local_record

        inputs = read_local_record(self._train_dir) if (self._train_dir / "inputs.json").is_file() else None
        with self._lock:
            if inputs is not None and inputs != self.report.inputs:
                self.report.inputs = inputs
                self.write()

    def refresh_step(self) -> None:
        self.refresh_inputs()
        if self.store is None:
            return
        try:
            step = self.store.committed_step()
        except Exception as e:  # noqa: BLE001 - a stale step is fine; the next check tries again
            self._warn_once("cannot list committed checkpoints", e)
            return
        with self._lock:
            if step is not None and step != self.report.last_committed_step:
                self.report.last_committed_step = step
                self.write()

    def stage_started(self, name: str) -> StageResult:
        with self._lock:
            result = StageResult(name, started_at=time.time())
            if name == "train":
                self._train_started = result.started_at
            self.report.stages.append(result)
            self.write()
        return result

    def stage_ended(self, result: StageResult, code: int, seconds: float, skipped: bool = False) -> None:
        with self._lock:
            result.exit_code, result.seconds, result.skipped = code, seconds, skipped
        if result.name == "train" and self.node is not None and not skipped:
            self.node_outcome(code)
        self.refresh_step()
        self.write()

    def watch(self, interval: float) -> None:
        """Rewrite the report after every checkpoint commit, in a daemon thread until ``unwatch``: train's
        upload worker removes a checkpoint's snapshot from ``sync-pending/`` once it is committed, so a snapshot
        that leaves (a local listing, every second) refreshes the committed step from storage; every
        ``interval`` s it is refreshed anyway."""
        if self.store is None or interval <= 0:
            return
        from qa_train.sync.worker import PENDING_DIR

        self._stop_watch.clear()
        pending = self._train_dir / PENDING_DIR

        def snapshots() -> set[str]:
            try:
                return set(os.listdir(pending))
            except OSError:
                return set()

        def loop() -> None:
            seen, last = snapshots(), time.monotonic()
            while not self._stop_watch.wait(min(1.0, interval)):
                now = snapshots()
                committed, seen = seen - now, now
                if committed or time.monotonic() - last >= interval:
                    self.refresh_step()
                    last = time.monotonic()

        self._watcher = threading.Thread(target=loop, name="report-step", daemon=True)
        self._watcher.start()

    def unwatch(self) -> None:
        self._stop_watch.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
            self._watcher = None

    def node_outcome(self, code: int) -> None:
        """After the train stage of a multi-node group: another node writes its exit code for node 0; node 0
        records every node's (waiting up to ``QA_NODE_STATUS_WAIT_S``, default 60, for them when training
        failed — a node that succeeded wrote its status before its ranks' peers could end) in ``group``."""
        from qa_train.node_status import failed_nodes, read_statuses, status_name, status_text

        node = self.node
        if node is None or self.store is None:
            return
        if node.node_rank > 0:
            try:
                self.store.put_text(
                    status_name(node.node_rank), status_text(node.node_rank, code, self.report.instance_id)
                )
            except Exception as e:  # noqa: BLE001 - node 0 then reports this node's outcome as unknown
                self._warn_once(f"cannot write {status_name(node.node_rank)}", e)
            return
        wait = float(os.environ.get("QA_NODE_STATUS_WAIT_S") or 60) if code != 0 else 10.0
        statuses = read_statuses(self.store.get_text, node.nnodes, self._train_started or 0.0, code, wait)
        with self._lock:
            group = dict(self.report.group or {})
            group["nodes"], group["failed_nodes"] = statuses, failed_nodes(statuses)
            self.report.group = group

    def flush_uploads(self) -> None:
        """Checkpoints still only on this disk (uploads that failed) are sent before the final report, for up
        to ``QA_S3_RETRY_S``; meanwhile the report says "uploads pending" and until when, so the controller
        keeps the instance that holds the only copies."""
        from qa_train.storage import retry_seconds
        from qa_train.sync.worker import flush_pending, pending_uploads

        names = pending_uploads(self._train_dir) if self.store is not None else []
        if not names or self.store is None:
            return
        total = retry_seconds()
        with self._lock:
            self.report.uploads_pending, self.report.uploads_until = names, time.time() + total
        self.write()
        print(f"[run] uploads pending: {', '.join(names)}; retrying for up to {total:.0f}s", file=sys.stderr,
              flush=True)  # fmt: skip
        left = flush_pending(self._train_dir, self.store.location(), self.store.endpoint_url, total_s=total)
        with self._lock:
            self.report.uploads_pending = left
            if not left:
                self.report.uploads_until = None
        if left:
            print(f"[run] uploads still pending after {total:.0f}s: {', '.join(left)} (kept in {self._train_dir})",
                  file=sys.stderr, flush=True)  # fmt: skip
        self.refresh_step()

    def finish(self, ok: bool, error: str | None) -> None:
        with self._lock:
            self.report.state = RunState.SUCCEEDED if ok else RunState.FAILED
            self.report.error = error
        if self.before_final is not None:
            self.write(upload=False)  # the local report.json already says how it ended, for before_final
            try:
                self.before_final()
            except Exception as e:  # noqa: BLE001 - the final report must be published whatever happens here
                self._warn_once("before the final report", e)
        self.write()

    def interrupted(self, code: int) -> None:
        """A signal (docker stop, preemption): the report stays ``running`` so the controller may relaunch."""
        self.refresh_step()  # the stage's SIGTERM save was committed before it exited: last_committed_step
        with self._lock:
            self.report.error = f"interrupted (exit {code}); state left running for the controller to decide"
        self.write()

    def verified(self, done: set[str], outputs: list[str]) -> set[str]:
        """``done`` minus the stage outputs whose files do not match their manifest (size and sha256): such a
        stage runs again (train resumes from the last good checkpoint) instead of being skipped, with a warning.
        Storage that cannot be read now also runs the stage again."""
        if self.store is None:
            return done
        from qa_train.sync.manifest import verify_remote
        from qa_train.sync.storage import S3Location

        good = set(done)
        for name in [o for o in outputs if o in done]:
            loc = S3Location.parse(self.store.layout.child(name))
            try:
                problem = verify_remote(self.store.client, loc.bucket, loc.prefix, loc.uri)
            except Exception as e:  # noqa: BLE001 - unverifiable: redo the stage rather than trust it
                problem = f"cannot verify: {type(e).__name__}: {e}"
            if problem is not None:
                good.discard(name)
                print(f"[run] warning: {name}/ is committed but corrupt ({problem}); making it again (train "
                      "resumes from the last good checkpoint)", file=sys.stderr, flush=True)  # fmt: skip
        return good


def restore(store: RunStore, folder: str, local: Path) -> None:
    """Pull a committed folder (e.g. final/) into ``local`` (kept files of the same name are replaced)."""
    from qa_train.storage import make_client
    from qa_train.sync.transfer import pull_directory

    tmp = local.parent / f".restore-{local.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    client = make_client(store.endpoint_url)
    pull_directory(
        client,
        store.location(folder),
        tmp,
        progress=False,
        endpoint_url=store.endpoint_url,
    )
    local.mkdir(parents=True, exist_ok=True)
    for entry in tmp.iterdir():
        target = local / entry.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(entry, target)
    tmp.rmdir()


def _run_commands(stage: Stage, only_prep: bool = False) -> int:
    code = 0
    for cmd, skip in zip(stage.commands, stage.skip_if_exists or [None] * len(stage.commands), strict=False):
        if only_prep and not skip:
            continue  # a stage done earlier still runs its idempotent preparation (the tiny base model)
        if skip and Path(skip).exists():
            print(
                f"[run] {skip} exists; skipping {cmd[3] if len(cmd) > 3 else cmd[0]}",
                file=sys.stderr,
                flush=True,
            )
            continue
        print("[run] $ " + " ".join(cmd), file=sys.stderr, flush=True)  # holds no secret: those are env only
        try:
            # inherits stdout/stderr: output streams as it comes; own process group: see _Child
            _Child.proc = subprocess.Popen(cmd, start_new_session=True)
        except OSError as e:
            print(f"[run] cannot start {cmd[0]}: {e}", file=sys.stderr)
            return 127
        code = _Child.proc.wait()
        if _Child.signalled is not None:
            _Child.wait_group(_Child.proc.pid)
            _Child.proc = None
            print(
                f"[run] stage ended (exit {code}) after signal {_Child.signalled}",
                file=sys.stderr,
                flush=True,
            )
            raise SystemExit(128 + _Child.signalled)
        _Child.proc = None
        if code != 0:
            return code
    return code


def run_stages(
    stages: list[Stage], summary_path: Path | None = None, reporter: Reporter | None = None
) -> int:
    """Run the stages in order; the first failure stops the run. With a reporter, the report follows each stage
    and ends final (succeeded / failed + the error line)."""
    results: list[dict[str, Any]] = []
    code, error = 0, None
    done = reporter.committed() if reporter is not None else set()
    if reporter is not None:  # a committed output is skipped only when its files match the manifest
        done = reporter.verified(done, [s.output for s in stages if s.output is not None])
    skipped_outputs: set[str] = set()
    interval = float(os.environ.get(ENV_REPORT_INTERVAL) or 30)
    is_done = [s.output is not None and s.output in done for s in stages]
    for i, stage in enumerate(stages):
        t0 = time.monotonic()
        skip = is_done[i]
        entry = reporter.stage_started(stage.name) if reporter is not None else None
        stage_error = None
        if skip:
            print(
                f"[run] stage '{stage.name}': {stage.output}/ already committed; skipping",
                file=sys.stderr,
                flush=True,
            )
            skipped_outputs.add(stage.output)  # type: ignore[arg-type]
            # its preparation (the tiny base model) still runs when a later stage needs it
            stage_code = _run_commands(stage, only_prep=True) if not all(is_done[i:]) else 0
        else:
            print(f"[run] stage '{stage.name}' starting", file=sys.stderr, flush=True)
            stage_code = 0
            for folder, local, proof in stage.needs:
                if folder in skipped_outputs and reporter is not None and reporter.store is not None:
                    if (Path(local) / proof).exists():
                        continue
                    print(f"[run] restoring {folder}/ from storage into {local}", file=sys.stderr, flush=True)
                    try:
                        restore(reporter.store, folder, Path(local))
                    except Exception as e:  # noqa: BLE001 - one line naming the folder, exit 3 (storage)
                        stage_code, stage_error = (
                            EXIT_STORAGE,
                            f"cannot restore {reporter.store.layout.child(folder)}: {e}",
                        )
                        break
            if stage_code == 0:
                if stage.action is not None:
                    stage_code, stage_error = stage.action()
                else:
                    if reporter is not None and stage.name == "train":
                        reporter.watch(interval)
                    try:
                        stage_code = _run_commands(stage)
                    finally:
                        if reporter is not None:
                            reporter.unwatch()
        secs = round(time.monotonic() - t0, 1)
        if entry is not None:
            reporter.stage_ended(entry, stage_code, secs, skipped=skip)  # type: ignore[union-attr]
        results.append(
            {
                "stage": stage.name,
                "exit_code": stage_code,
                "seconds": secs,
                **({"skipped": True} if skip else {}),
            }
        )
        if stage_code != 0:
            error = stage_error or f"stage '{stage.name}' failed (exit {stage_code})"
            print(f"error: {error}", file=sys.stderr, flush=True)
            code = stage_code if 0 < stage_code < 256 else 1
            break
        if not skip:
            print(f"[run] stage '{stage.name}' done in {secs}s", file=sys.stderr, flush=True)
    summary = {"ok": code == 0, "stages": results}
    if summary_path is not None:
        try:
            summary_path.parent.mkdir(parents=True, exist_ok=True)
            summary_path.write_text(json.dumps(summary, indent=2) + "\n")
        except OSError as e:
            logger.warning("could not write %s: %s", summary_path, e)
    print(json.dumps(summary), flush=True)
    if reporter is not None:
        reporter.flush_uploads()
        reporter.finish(code == 0, error)
    return code


class SpecFetchError(Exception):
    """The spec named by ``QA_JOB_SPEC_URI`` cannot be read: exit 3 (storage) or 2 (malformed URI)."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def read_spec_uri(uri: str) -> str:
    """The spec's text from ``s3://…``: credentials from the standard AWS chain, endpoint AWS_ENDPOINT_URL."""
    try:
        store, name = RunStore.for_object(uri)
    except ValueError as e:
        raise SpecFetchError(f"{ENV_SPEC_URI}: {e}", 2) from None
    try:
        text = store.get_text(name)
    except Exception as e:  # botocore's errors, described by the storage adapter
        from qa_train.storage import describe_error

        raise SpecFetchError(
            f"cannot read the job spec {uri}: {describe_error(e, uri)}", EXIT_STORAGE
        ) from None
    if text is None:
        raise SpecFetchError(f"cannot read the job spec {uri}: no such object", EXIT_STORAGE)
    return text


def load_spec(path: str | None) -> RenderedSpec | JobSpec:
    if path:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as e:
            raise SpecError(f"{p}: cannot read job spec: {e.strerror}") from None
        return load_any(text, str(p))
    text = os.environ.get(ENV_VAR)
    if text:
        return load_any(text, f"${ENV_VAR}")
    uri = os.environ.get(ENV_SPEC_URI)
    if uri:
        return load_any(read_spec_uri(uri), uri)
    raise SpecError(
        f"no job spec: pass a path, --spec PATH, the spec JSON in env {ENV_VAR} or its s3:// URI in {ENV_SPEC_URI}"
    )


def _input_fields(job: JobSpec) -> list[tuple[str, str, str]]:
    """(field, value, expect) of every input a spec names (data files, model, tiny-model tokenizer text)."""
    d = job.data
    out = [("data.train_path", d.train_path, "any")]
    out += [("data.validation_path", d.validation_path, "any")] if d.validation_path else []
    out += [("data.hotpot_qa_dev_path", d.hotpot_qa_dev_path, "file")] if d.hotpot_qa_dev_path else []
    if job.model.name_or_path:
        out.append(("model.name_or_path", job.model.name_or_path, "folder"))
    if job.model.make_tiny is not None and job.model.make_tiny.data:
        out.append(("model.make_tiny.data", job.model.make_tiny.data, "any"))
    return out


def localize(
    job: JobSpec, cache_dir: str | None = None, backend: str | None = None
) -> tuple[JobSpec, Stage | None]:
    """The job with every input URI replaced by its cache path, and the ``inputs`` stage that fetches them.

    On a cloud backend (no /data mount) a data path that does not exist there fails this stage at once, not
    the eval stage hours later."""
    from qa_train.inputs import is_remote, local_path_for

    fields = _input_fields(job)
    remote = [(f, u, e) for f, u, e in fields if is_remote(u)]
    cloud = (backend or "").lower() in ("vast", "runpod", "runpod-cluster")
    absent = [(f, u) for f, u, _ in fields if cloud and f.startswith("data.") and not is_remote(u)]
    if not remote and not absent:
        return job, None
    local = {u: local_path_for(u, cache_dir) for _, u, _ in remote}
    data = job.data.model_copy(
        update={k: local.get(v, v) for k, v in job.data.model_dump().items() if isinstance(v, str)}
    )
    model = job.model
    if model.name_or_path in local:
        model = model.model_copy(update={"name_or_path": local[model.name_or_path]})
    if model.make_tiny is not None and model.make_tiny.data in local:
        model = model.model_copy(
            update={"make_tiny": model.make_tiny.model_copy(update={"data": local[model.make_tiny.data]})}
        )
    new_job = job.model_copy(update={"data": data, "model": model})

    def fetch_all() -> tuple[int, str | None]:
        from qa_train.inputs import EXIT_USAGE, InputError, fetch_input

        for what, path in absent:
            if not Path(path).exists():
                return EXIT_USAGE, (
                    f"{what}: {path} does not exist on this {backend} instance (a cloud host has no /data "
                    "mount): use s3://… (python launch/submit.py upload-data), https://… or hf://datasets/…"
                )
        for what, uri, expect in remote:
            try:
                path = fetch_input(uri, cache_dir, what=what, expect=expect)  # type: ignore[arg-type]
            except InputError as e:
                return e.exit_code, str(e)
            print(f"[run] {what}: {uri} → {path}", file=sys.stderr, flush=True)
        return 0, None

    return new_job, Stage("inputs", [], action=fetch_all)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m qa_train run", description=__doc__.split("\n\n")[0])
    p.add_argument("spec_path", nargs="?", default=None, help="job YAML/JSON or rendered spec.json")
    p.add_argument("--spec", dest="spec_opt", default=None, help="same as the positional SPEC")
    p.add_argument("--output_root", default=None, help="override the spec's output_root (where outputs go)")
    p.add_argument("--print_plan", action="store_true", help="print the stage commands as JSON and exit")
    a = p.parse_args(argv)
    from qa_train.logs import SHORT_FORMAT, setup_logging

    setup_logging(fmt=SHORT_FORMAT, datefmt=None)
    from qa_train.driver import enforce  # the image's driver floor (QA_MIN_DRIVER), before any paid-for stage

    if driver_error := enforce():
        print(f"error: {driver_error}", file=sys.stderr)
        return 2
    for chatty in ("botocore", "boto3", "s3transfer", "urllib3"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    try:
        spec = load_spec(a.spec_opt or a.spec_path)
    except SpecError as e:
        print(f"error: invalid job spec:\n{e}", file=sys.stderr)
        return 2
    except SpecFetchError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    if isinstance(spec, RenderedSpec):
        job, plan, ds = spec.job, spec.plan, spec.deepspeed
    else:
        job, plan, ds = spec, default_plan(spec), None
    if a.output_root:
        job = job.model_copy(update={"output_root": a.output_root})
    run_dir = Path(job.run_dir())
    ds_path = str(run_dir / "ds_config.json") if plan.launcher == "deepspeed" else None
    local_job, fetch_stage = localize(job, backend=os.environ.get(ENV_BACKEND))
    try:
        stages = ([fetch_stage] if fetch_stage else []) + build_stages(local_job, plan, ds_path)
    except NodeEnvError as e:  # the platform's node variables are partial: nothing has started
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.print_plan:
        print(json.dumps([{"stage": s.name, "commands": s.commands} for s in stages if s.commands], indent=2))
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
    node = group_node(plan)
    reporter = Reporter(job, run_dir, node=node)
    from qa_train.report_html import make_run_report  # report.html + plots, also to <run>/report/

    if reporter.shared:
        reporter.before_final = lambda: make_run_report(run_dir, reporter.store)
    try:
        code = run_stages(stages, run_dir / "run_summary.json", reporter)
    except SystemExit as e:  # a signal: not final, no self-stop
        reporter.unwatch()
        reporter.interrupted(int(e.code or 1) if not isinstance(e.code, str) else 1)
        raise
    if node is not None and node.node_rank > 0 and code == 0:
        print(f"[run] node {node.node_rank} of {node.nnodes}: train done; node 0 runs merge / eval and writes the "
              "run report", file=sys.stderr, flush=True)  # fmt: skip
    from qa_train.instance_stop import stop_self

    stop_self()
    return code
