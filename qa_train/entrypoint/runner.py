"""Running the stages in order, with the run report following each stage."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from qa_train.contract import ExitCode
from qa_train.entrypoint.reporter import Reporter, restore
from qa_train.entrypoint.stages import Stage
from qa_train.entrypoint.supervisor import run_steps

logger = logging.getLogger("qa_train.entrypoint")
ENV_REPORT_INTERVAL = "QA_REPORT_INTERVAL"  # seconds between committed-step checks during train (default 30)


def _say(message: str) -> None:
    print(f"[run] {message}", file=sys.stderr, flush=True)


def _done_outputs(stages: list[Stage], reporter: Reporter | None) -> set[str]:
    """Outputs an earlier launch committed, kept only when their files match the manifest."""
    if reporter is None:
        return set()
    done = reporter.committed()
    return reporter.verified(done, [s.output for s in stages if s.output is not None])


def _restore_needs(
    stage: Stage, skipped_outputs: set[str], reporter: Reporter | None
) -> tuple[int, str | None]:
    """Pull the committed folders this stage reads when the stage that made them was skipped on a fresh disk:
    one line naming the folder and exit 3 (storage) when that fails."""
    if reporter is None or reporter.store is None:
        return 0, None
    for folder, local, proof in stage.needs:
        if folder not in skipped_outputs or (Path(local) / proof).exists():
            continue
        _say(f"restoring {folder}/ from storage into {local}")
        try:
            restore(reporter.store, folder, Path(local))
        except Exception as e:  # noqa: BLE001 - one line naming the folder, exit 3 (storage)
            return ExitCode.STORAGE, f"cannot restore {reporter.store.layout.child(folder)}: {e}"
    return 0, None


def _run_stage(
    stage: Stage, reporter: Reporter | None, skipped_outputs: set[str], interval: float
) -> tuple[int, str | None]:
    _say(f"stage '{stage.name}' starting")
    code, error = _restore_needs(stage, skipped_outputs, reporter)
    if code != 0:
        return code, error
    if stage.action is not None:
        return stage.action()
    if reporter is not None and stage.name == "train":
        reporter.watch(interval)  # the report follows every checkpoint commit
    try:
        return run_steps(stage), None
    finally:
        if reporter is not None:
            reporter.unwatch()


def _skip_stage(stage: Stage, rest_done: bool) -> int:
    _say(f"stage '{stage.name}': {stage.output}/ already committed; skipping")
    # its preparation (the tiny base model) still runs when a later stage needs it
    return run_steps(stage, only_prep=True) if not rest_done else 0


def _finish(
    summary: dict[str, Any], summary_path: Path | None, reporter: Reporter | None, error: str | None
) -> None:
    """``run_summary.json`` + its line on stdout, then pending uploads and the final report."""
    if summary_path is not None:
        try:
            summary_path.parent.mkdir(parents=True, exist_ok=True)
            summary_path.write_text(json.dumps(summary, indent=2) + "\n")
        except OSError as e:
            logger.warning("could not write %s: %s", summary_path, e)
    print(json.dumps(summary), flush=True)
    if reporter is not None:
        reporter.flush_uploads()
        reporter.finish(summary["ok"], error)


def run_stages(
    stages: list[Stage], summary_path: Path | None = None, reporter: Reporter | None = None
) -> int:
    """Run the stages in order; the first failure stops the run. With a reporter, the report follows each stage
    and ends final (succeeded / failed + the error line)."""
    results: list[dict[str, Any]] = []
    code, error = 0, None
    done = _done_outputs(stages, reporter)
    skipped_outputs: set[str] = set()
    interval = float(os.environ.get(ENV_REPORT_INTERVAL) or 30)
    is_done = [s.output is not None and s.output in done for s in stages]
    for i, stage in enumerate(stages):
        t0, skip = time.monotonic(), is_done[i]
        entry = reporter.stage_started(stage.name) if reporter is not None else None
        if skip:
            skipped_outputs.add(stage.output)  # type: ignore[arg-type]
            stage_code, stage_error = _skip_stage(stage, all(is_done[i:])), None
        else:
            stage_code, stage_error = _run_stage(stage, reporter, skipped_outputs, interval)
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
            _say(f"stage '{stage.name}' done in {secs}s")
    _finish({"ok": code == 0, "stages": results}, summary_path, reporter, error)
    return code
