"""Live training metrics for people watching a rented GPU: ``metrics.json`` beside the run report.

Why a file in object storage rather than log lines: every backend (local Docker, vast, RunPod) can reach the
run's bucket, the launcher already reads ``report.json`` from there, and a parsed number never depends on a
log format. Rank 0 rewrites ``output_dir/metrics.json`` every few seconds and PUTs the same text to
``<run>/metrics.json`` at most every ``put_every_s`` (one PUT, from a background thread: a slow or failing
store costs a warning, never a training step). The file carries a bounded history (for the report's plots) and
one segment per training start (preemption / resume marks). Also writes ``packing.json`` (sample lengths and
fill per pack) for the report. Layout and the typed file: ``qa_train.contract``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from qa_train.contract import METRICS_NAME, PACKING_NAME, RunLayout, RunMetrics
from qa_train.fsutil import atomic_write_text
from qa_train.storage import RunStore

logger = logging.getLogger("qa_train.metrics")

MAX_POINTS = 2000  # history bound: ~40 KB of JSON
KEEP_RECENT = 200  # the newest points are never thinned


def thin(history: list[dict[str, Any]], max_points: int = MAX_POINTS, keep_recent: int = KEEP_RECENT) -> None:
    """Bound ``history`` in place: drop every second older point (eval points are kept) until it fits.

    Why thinning rather than a ring buffer: the report plots the whole run; halving the old resolution keeps the
    curve's shape from step 0 with O(max_points) memory."""
    while len(history) > max_points:
        head, tail = history[:-keep_recent], history[-keep_recent:]
        kept = [p for i, p in enumerate(head) if i % 2 == 0 or p.get("eval_loss") is not None]
        if len(kept) == len(head):  # only eval points left to drop: drop the oldest ones
            kept = head[len(history) - max_points :]
        history[:] = kept + tail


class _Putter:
    """One daemon thread, one slot: the newest text waits for its PUT; older unsent texts are replaced."""

    def __init__(self, store: RunStore):
        self.store = store
        self._text: str | None = None
        self._cv = threading.Condition()
        self._busy = False
        self._closed = False
        self._warned = False
        self.puts = 0
        self._thread = threading.Thread(target=self._loop, name="metrics-put", daemon=True)
        self._thread.start()

    def submit(self, text: str) -> None:
        with self._cv:
            self._text = text
            self._cv.notify_all()

    def _loop(self) -> None:
        while True:
            with self._cv:
                while self._text is None and not self._closed:
                    self._cv.wait()
                if self._text is None and self._closed:
                    return
                text, self._text, self._busy = self._text, None, True
            try:
                self.store.put_text(METRICS_NAME, text)
                self.puts += 1
            except Exception as e:  # noqa: BLE001 - metrics are for people: a warning, never a failed run
                if not self._warned:
                    self._warned = True
                    logger.warning("cannot write %s: %s: %s", self.store.layout.metrics, type(e).__name__, e)
            finally:
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()

    def flush(self, timeout: float) -> bool:
        """Wait until the last submitted text is sent (or ``timeout``); True when nothing is left."""
        end = time.monotonic() + timeout
        with self._cv:
            while self._text is not None or self._busy:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._cv.wait(left)
        return True

    def close(self, timeout: float = 10.0) -> None:
        self.flush(timeout)
        with self._cv:
            self._closed = True
            self._cv.notify_all()


class LiveMetrics(TrainerCallback):
    """Rank 0's view of training, written to ``output_dir/metrics.json`` and ``<run>/metrics.json``.

    ``tokens_seen`` returns this rank's non-padding tokens so far (``QATrainer.real_tokens_seen``); ×
    ``world_size`` approximates all ranks (data-parallel ranks see equally sized packed batches)."""

    def __init__(
        self,
        output_dir: str | Path,
        run_name: str,
        store: RunStore | None = None,
        *,
        tokens_seen: Callable[[], int] | None = None,
        world_size: int = 1,
        write_every_s: float = 2.0,
        put_every_s: float = 15.0,
        max_points: int = MAX_POINTS,
        clock: Callable[[], float] = time.time,
    ):
        self.path = Path(output_dir) / METRICS_NAME
        self.store = store
        self.tokens_seen = tokens_seen
        self.world_size = max(int(world_size), 1)
        self.write_every_s = write_every_s
        self.put_every_s = put_every_s
        self.max_points = max_points
        self.clock = clock
        self.m = RunMetrics(run_name=run_name)
        self._putter = _Putter(store) if store is not None else None
        self._last_write = self._last_put = float("-inf")
        self._window: tuple[float, int] | None = None  # (time, tokens) at the last logged point

    # -- state from earlier launches -------------------------------------------------------------------------
    def _previous(self) -> RunMetrics | None:
        """The newest metrics an earlier launch left (object storage first, then this disk)."""
        found: list[RunMetrics] = []
        if self.store is not None:
            try:
                if (m := self.store.read_metrics()) is not None:
                    found.append(m)
            except Exception as e:  # noqa: BLE001 - start a fresh history rather than fail
                logger.warning("cannot read the previous %s: %s", self.store.layout.metrics, e)
        try:
            found.append(RunMetrics.from_json(self.path.read_text(), str(self.path)))
        except (OSError, ValueError):
            pass
        return max(found, key=lambda m: m.updated_at) if found else None

    # -- TrainerCallback -------------------------------------------------------------------------------------
    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if not state.is_world_process_zero:
            return
        now = self.clock()
        prev = self._previous()
        step = int(state.global_step)
        if prev is not None:  # a resumed run: keep what led to the resume point, forget what was redone
            self.m.history = [p for p in prev.history if p.get("step", 0) <= step]
            self.m.segments = [s for s in prev.segments if s.get("start_step", 0) <= step]
        self.m.segments.append({"start_step": step, "started_at": now})
        self.m.step, self.m.max_steps, self.m.started_at = step, int(state.max_steps or 0) or None, now
        self.m.finished = False
        self._window = (now, self._tokens())
        self._write(force=True)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if state.is_world_process_zero:
            self.m.step, self.m.epoch = int(state.global_step), _num(state.epoch)
            self._write()

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any
    ) -> Any:
        if not state.is_world_process_zero or not logs:
            return
        now = self.clock()
        self.m.step, self.m.epoch = int(state.global_step), _num(state.epoch)
        point: dict[str, Any] = {"step": self.m.step, "t": round(now, 3)}
        if "loss" in logs:
            self.m.train_loss = point["loss"] = _num(logs["loss"])
            self.m.learning_rate = point["lr"] = _num(logs.get("learning_rate"))
            tokens = self._tokens()
            if self._window is not None and now > self._window[0] and tokens >= self._window[1]:
                rate = (tokens - self._window[1]) * self.world_size / (now - self._window[0])
                self.m.tokens_per_second = point["tokens_per_second"] = round(rate, 2)
            self._window = (now, tokens)
        if "eval_loss" in logs:
            self.m.eval_loss = point["eval_loss"] = _num(logs["eval_loss"])
        if len(point) > 2:
            self.m.history.append(point)
            thin(self.m.history, self.max_points)
        self._gpu_memory()
        self._write()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if not state.is_world_process_zero:
            return
        self.m.step, self.m.epoch, self.m.finished = int(state.global_step), _num(state.epoch), True
        self._gpu_memory()
        self._write(force=True)
        if self._putter is not None:
            self._putter.close(timeout=30.0)

    # -- helpers ---------------------------------------------------------------------------------------------
    def _tokens(self) -> int:
        try:
            return int(self.tokens_seen()) if self.tokens_seen is not None else 0
        except Exception:  # noqa: BLE001 - a number for people only
            return 0

    def _gpu_memory(self) -> None:
        try:
            import torch

            if torch.cuda.is_available():
                dev = torch.cuda.current_device()
                self.m.gpu_memory_gb = round(torch.cuda.max_memory_allocated(dev) / 2**30, 2)
                self.m.gpu_memory_total_gb = round(
                    torch.cuda.get_device_properties(dev).total_memory / 2**30, 2
                )
        except Exception:  # noqa: BLE001 - informational
            pass

    def _write(self, force: bool = False) -> None:
        now = self.clock()
        if not force and now - self._last_write < self.write_every_s:
            return
        self.m.updated_at = now
        text = self.m.to_json()
        self._last_write = now
        try:
            atomic_write_text(self.path, text)
        except OSError as e:
            logger.warning("cannot write %s: %s", self.path, e)
        if self._putter is not None and (force or now - self._last_put >= self.put_every_s):
            self._last_put = now
            self._putter.submit(text)


def _num(v: Any) -> float | None:
    try:
        return None if v is None else float(v)
    except (TypeError, ValueError):
        return None


# -- packing.json --------------------------------------------------------------------------------------------


def histogram(values: Sequence[float], lo: float, hi: float, bins: int) -> dict[str, Any]:
    """Counts of ``values`` in ``bins`` equal bins over [lo, hi] (the last bin includes hi)."""
    counts = [0] * bins
    width = (hi - lo) / bins if hi > lo else 1.0
    for v in values:
        i = int((v - lo) / width) if width else 0
        counts[min(max(i, 0), bins - 1)] += 1
    return {"lo": lo, "hi": hi, "counts": counts}


def packing_profile(sample_lengths: Sequence[int], pack_lengths: Sequence[int] | None, max_length: int,
                    bins: int = 40) -> dict[str, Any]:  # fmt: skip
    """Sample-length histogram and fill per pack (pack tokens / max_length), both bounded in size."""
    lengths = [int(x) for x in sample_lengths]
    doc: dict[str, Any] = {
        "max_length": int(max_length),
        "num_samples": len(lengths),
        "sample_tokens": sum(lengths),
        "sample_length_max": max(lengths, default=0),
        "sample_length_mean": sum(lengths) / len(lengths) if lengths else 0.0,
        "sample_length_hist": histogram(lengths, 0, int(max_length), bins),
        "packed": pack_lengths is not None,
    }
    if pack_lengths is not None:
        fills = [int(x) / max_length for x in pack_lengths]
        doc.update(
            num_packs=len(fills),
            fill_mean=sum(fills) / len(fills) if fills else 0.0,
            fill_min=min(fills, default=0.0),
            fill_hist=histogram(fills, 0.0, 1.0, bins),
        )
    return doc


def attach_live_metrics(trainer: Any, session: Any, training_args: Any, train_data: Any, train_ds: Any,
                        packed: bool) -> LiveMetrics | None:  # fmt: skip
    """Called once by ``train`` after the Trainer exists: on world rank 0, writes ``packing.json`` and adds
    the ``LiveMetrics`` callback (to ``<run>/metrics.json`` when the run syncs). Never raises: a problem here is
    a warning, training goes on."""
    if not trainer.is_world_process_zero():
        return None
    from qa_train.sync import run_name_for

    output_dir = Path(training_args.output_dir)
    try:
        if train_data is not None:
            packs = [sum(len(s["input_ids"]) for s in pack) for pack in train_ds] if packed else None
            doc = packing_profile(train_data.lengths, packs, training_args.model_max_length)
            atomic_write_text(output_dir / PACKING_NAME, json.dumps(doc, indent=1) + "\n")
    except Exception as e:  # noqa: BLE001
        logger.warning("cannot write %s: %s", output_dir / PACKING_NAME, e)
    try:
        store = None
        if session.run is not None:
            store = RunStore(RunLayout(session.run.uri), session.endpoint_url)
        cb = LiveMetrics(output_dir, run_name_for(training_args), store,
                         tokens_seen=lambda: trainer.real_tokens_seen,
                         world_size=int(getattr(training_args, "world_size", 1) or 1))  # fmt: skip
        trainer.add_callback(cb)
        return cb
    except Exception as e:  # noqa: BLE001
        logger.warning("live metrics disabled: %s", e)
        return None
