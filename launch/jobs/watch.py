"""Training progress for ``status`` / ``watch``: the run's live ``metrics.json`` (written by the trainer into
object storage) joined with the registry's launches (restarts, dollars so far) and the run report.

Why the launcher computes elapsed / ETA / cost here and not the container: the container knows steps and time
of its own launch only; prices and earlier launches live in the launcher's registry. Pure formatting plus one
loop (``watch``) with injected clock, sleep and output, so tests run it without a terminal or waiting.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from qa_train.contract import RunMetrics

CLEAR = "\x1b[H\x1b[2J"  # cursor home + clear screen: a plain redraw, no curses


def progress(doc: dict[str, Any], metrics: RunMetrics | None, now: float) -> dict[str, Any]:
    """Numbers for people and scripts from a ``job_status`` document and the run's metrics (None: none yet)."""
    launches = doc.get("launches") or []
    started = min((x["started_at"] for x in launches), default=None)
    ended = [x.get("ended_at") for x in launches]
    end = max(e for e in ended if e) if launches and all(ended) else now
    rep = doc.get("report") or {}
    out: dict[str, Any] = {
        "elapsed_s": round(end - started, 1) if started is not None else None,
        "restarts": doc.get("restarts"),
        "launches": len(launches),
        "cost_usd": doc.get("cost_usd"),
        "price_per_hour": next(
            (x.get("price_per_hour") for x in reversed(launches) if x.get("ended_at") is None), None
        ),  # fmt: skip
        "last_committed_step": rep.get("last_committed_step", doc.get("last_step")),
    }
    if metrics is None:
        return out
    out.update(
        step=metrics.step,
        max_steps=metrics.max_steps,
        percent=round(100.0 * metrics.step / metrics.max_steps, 1) if metrics.max_steps else None,
        epoch=metrics.epoch,
        eta_s=None if metrics.finished else metrics.eta_s(),
        train_loss=metrics.train_loss,
        eval_loss=metrics.eval_loss,
        learning_rate=metrics.learning_rate,
        tokens_per_second=metrics.tokens_per_second,
        gpu_memory_gb=metrics.gpu_memory_gb,
        gpu_memory_total_gb=metrics.gpu_memory_total_gb,
        training_finished=metrics.finished,
        metrics_age_s=round(max(0.0, now - metrics.updated_at), 1),
    )
    return out


def duration(seconds: float | None) -> str:
    """``3h05m`` / ``12m30s`` / ``45s``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def _num(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def progress_lines(p: dict[str, Any]) -> list[str]:
    """Two lines under the job's header: where training is, then how it goes."""
    money = f"${p['cost_usd']:.3f} so far" if p.get("cost_usd") is not None else "$-"
    if p.get("price_per_hour"):
        money += f" (now ${p['price_per_hour']:.3f}/h)"
    commit = p.get("last_committed_step")
    head = f"  elapsed {duration(p.get('elapsed_s'))}, {money}, last committed checkpoint: " + (
        f"step {commit}" if commit is not None else "none"
    )
    if "step" not in p:
        return [head, "  training: no metrics yet"]
    total = p.get("max_steps")
    where = f"step {p['step']}/{total if total else '?'}" + (
        f" ({p['percent']:.1f}%)" if p.get("percent") is not None else ""
    )
    if p.get("epoch") is not None:
        where += f", epoch {p['epoch']:.2f}"
    eta = "done" if p.get("training_finished") else f"ETA {duration(p.get('eta_s'))}"
    gpu = ""
    if p.get("gpu_memory_gb") is not None:
        gpu = (
            f", GPU {p['gpu_memory_gb']:.1f}"
            + (f"/{p['gpu_memory_total_gb']:.0f}" if p.get("gpu_memory_total_gb") else "")
            + " GB"
        )
    return [
        head,
        f"  training: {where}, {eta}; loss {_num(p.get('train_loss'), '.4f')}, eval loss "
        f"{_num(p.get('eval_loss'), '.4f')}, lr {_num(p.get('learning_rate'), '.2e')}, "
        f"{_num(p.get('tokens_per_second'), ',.0f')} tok/s{gpu} (metrics {duration(p.get('metrics_age_s'))} old)",
    ]  # fmt: skip


def one_line(doc: dict[str, Any]) -> str:
    """One refresh of ``watch`` when stdout is not a terminal (logs, CI): everything on one line."""
    p = doc.get("progress") or {}
    parts = [time.strftime("%H:%M:%S"), doc["job_id"], doc["state"]]
    if "step" in p:
        parts.append(f"step {p['step']}/{p.get('max_steps') or '?'}")
        parts.append(f"loss {_num(p.get('train_loss'), '.4f')}")
        parts.append(f"lr {_num(p.get('learning_rate'), '.2e')}")
        parts.append(f"{_num(p.get('tokens_per_second'), '.0f')} tok/s")
        parts.append("done" if p.get("training_finished") else f"ETA {duration(p.get('eta_s'))}")
    parts.append(f"elapsed {duration(p.get('elapsed_s'))}")
    parts.append(f"restarts {doc.get('restarts', 0)}")
    if p.get("cost_usd") is not None:
        parts.append(f"${p['cost_usd']:.3f}")
    return "  ".join(parts)


def watch(
    get_doc: Callable[[], dict[str, Any]],
    lines: Callable[[dict[str, Any]], list[str]],
    *,
    interval: float = 10.0,
    as_json: bool = False,
    out: TextIO | None = None,
    tty: bool | None = None,
    sleep: Callable[[float], None] | None = None,
    max_refreshes: int | None = None,
) -> dict[str, Any]:
    """Refresh until the job's state is terminal (or ``max_refreshes``); returns the last document.

    On a terminal: clear and redraw the ``status`` lines. Otherwise one line per refresh (``--json``: one JSON
    document per line), so a log file stays readable."""
    out = out or sys.stdout
    tty = out.isatty() if tty is None else tty
    n = 0
    while True:
        doc = get_doc()
        n += 1
        if as_json:
            out.write(json.dumps(doc, default=str) + "\n")
        elif tty:
            out.write(CLEAR + "\n".join(lines(doc)) + "\n")
        else:
            out.write(one_line(doc) + "\n")
        out.flush()
        if doc.get("terminal") or (max_refreshes is not None and n >= max_refreshes):
            return doc
        (sleep or time.sleep)(interval)  # looked up now: tests replace time.sleep
