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
import signal
import sys
from pathlib import Path
from typing import Any

from qa_train.contract import ENV_BACKEND, ExitCode
from qa_train.entrypoint.flags import default_plan
from qa_train.entrypoint.localize import localize
from qa_train.entrypoint.reporter import Reporter
from qa_train.entrypoint.runner import run_stages
from qa_train.entrypoint.spec_input import SpecFetchError, load_spec
from qa_train.entrypoint.stages import Stage, build_stages, group_node
from qa_train.entrypoint.supervisor import Child
from qa_train.nodes import NodeEnvError
from qa_train.spec import JobSpec, Plan, RenderedSpec, SpecError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m qa_train run", description=__doc__.split("\n\n")[0])
    p.add_argument("spec_path", nargs="?", default=None, help="job YAML/JSON or rendered spec.json")
    p.add_argument("--spec", dest="spec_opt", default=None, help="same as the positional SPEC")
    p.add_argument("--output_root", default=None, help="override the spec's output_root (where outputs go)")
    p.add_argument("--print_plan", action="store_true", help="print the stage commands as JSON and exit")
    return p


def _setup_logging() -> None:
    from qa_train.logs import SHORT_FORMAT, setup_logging

    setup_logging(fmt=SHORT_FORMAT, datefmt=None)
    for chatty in ("botocore", "boto3", "s3transfer", "urllib3"):
        logging.getLogger(chatty).setLevel(logging.WARNING)


def _load(a: argparse.Namespace) -> tuple[JobSpec, Plan, dict[str, Any] | None] | int:
    """The job, its plan and deepspeed config; or the exit code after one ``error:`` line."""
    try:
        spec = load_spec(a.spec_opt or a.spec_path)
    except SpecError as e:
        print(f"error: invalid job spec:\n{e}", file=sys.stderr)
        return ExitCode.USAGE
    except SpecFetchError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    if isinstance(spec, RenderedSpec):
        job, plan, ds = spec.job, spec.plan, spec.deepspeed
    else:
        job, plan, ds = spec, default_plan(spec), None
    if a.output_root:
        job = job.model_copy(update={"output_root": a.output_root})
    return job, plan, ds


def _stages(job: JobSpec, plan: Plan, ds_path: str | None) -> list[Stage] | int:
    """The inputs stage (when an input is remote) + the spec's stages; exit 2 when the node's variables are
    partial (nothing has started)."""
    local_job, fetch_stage = localize(job, backend=os.environ.get(ENV_BACKEND))
    try:
        return ([fetch_stage] if fetch_stage else []) + build_stages(local_job, plan, ds_path)
    except NodeEnvError as e:
        print(f"error: {e}", file=sys.stderr)
        return ExitCode.USAGE


def _write_ds_config(plan: Plan, ds: dict[str, Any] | None, ds_path: str | None) -> int:
    if plan.launcher != "deepspeed" or ds_path is None:
        return 0
    if ds is None:
        print("error: invalid job spec: plan.launcher is deepspeed but the spec has no deepspeed config",
              file=sys.stderr)  # fmt: skip
        return ExitCode.USAGE
    Path(ds_path).parent.mkdir(parents=True, exist_ok=True)
    Path(ds_path).write_text(json.dumps(ds, indent=2))
    return 0


def _run(job: JobSpec, plan: Plan, stages: list[Stage], run_dir: Path) -> int:
    """The stages under signal forwarding, with the run report; at the end the instance stops itself."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, Child.handler)
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


def main(argv: list[str]) -> int:
    a = _parser().parse_args(argv)
    _setup_logging()
    from qa_train.driver import enforce  # the image's driver floor (QA_MIN_DRIVER), before any paid-for stage

    if driver_error := enforce():
        print(f"error: {driver_error}", file=sys.stderr)
        return ExitCode.USAGE
    loaded = _load(a)
    if isinstance(loaded, int):
        return loaded
    job, plan, ds = loaded
    run_dir = Path(job.run_dir())
    ds_path = str(run_dir / "ds_config.json") if plan.launcher == "deepspeed" else None
    stages = _stages(job, plan, ds_path)
    if isinstance(stages, int):
        return stages
    if a.print_plan:
        print(json.dumps([_plan_entry(s) for s in stages if s.commands], indent=2))
        return 0
    if code := _write_ds_config(plan, ds, ds_path):
        return code
    return _run(job, plan, stages, run_dir)


def _plan_entry(stage: Any) -> dict[str, Any]:
    """One stage as ``--print_plan`` shows it: its commands and the files they read (JSON ones parsed)."""
    entry: dict[str, Any] = {"stage": stage.name, "commands": stage.commands}
    if stage.files:
        entry["files"] = {path: _maybe_json(text) for path, text in stage.files.items()}
    return entry


def _maybe_json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text
