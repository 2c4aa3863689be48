"""Running the stages in order, with the run report following each stage."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from qa_train.entrypoint.reporter import Reporter, restore
from qa_train.entrypoint.spec_input import EXIT_STORAGE
from qa_train.entrypoint.stages import Stage
from qa_train.entrypoint.supervisor import _run_commands

logger = logging.getLogger("qa_train.run")
ENV_REPORT_INTERVAL = "QA_REPORT_INTERVAL"  # seconds between committed-step checks during train (default 30)


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
