"""``python -m qa_train report RUN --out DIR [--costs status.json]``: one run's report as ``report.html`` + PNGs.

RUN is a local run folder (``<output_root>/<run_name>``) or its ``s3://…/<run_name>`` URI. It reads what the
stages left: ``report.json``, ``metrics.json`` (history, resume segments), ``train_summary.json`` and
``packing.json`` (from ``model/`` locally, ``final/`` in storage), the eval summary (``eval/*.summary.json``) and,
with ``--costs``, the launches of ``python launch/submit.py status JOB --json`` (the container cannot know
prices). Plots: train/eval loss against step with resume marks, learning rate, tokens/s, packing (sample
lengths, fill per pack), eval next to the seed's published row, cost per launch. A plot without data is left
out, never drawn empty. Every number in the HTML sits in a ``<td class="num" data-src="source.key">`` cell, so
a test (or a script) can read each one back and check it against the file it came from.

``qa_train run`` calls ``make_run_report`` at the end (a failure is a warning) and uploads to ``<run>/report/``.
"""

from __future__ import annotations

import argparse
import html
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qa_train.contract import METRICS_NAME, PACKING_NAME, REPORT_DIR, REPORT_NAME, RunLayout
from qa_train.storage import RunStore

# The seed model's published HotpotQA row (qa-expert-7B-V1.0, github.com/khaimt/qa_expert README).
SEED_ROW = {"model": "qa-expert-7B-V1.0 (published)", "recall": 0.7257, "containing_acc": 0.668}
TRAIN_SUMMARY = "train_summary.json"


@dataclass
class RunData:
    source: str
    docs: dict[str, Any] = field(default_factory=dict)  # report, metrics, train_summary, packing, eval, costs

    def get(self, name: str) -> Any:
        return self.docs.get(name)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def load_local(run: Path) -> RunData:
    data = RunData(str(run))

    def first(*names: str) -> Any:
        return next((d for n in names if (d := _read_json(run / n)) is not None), None)

    data.docs["report"] = first(REPORT_NAME)
    data.docs["metrics"] = first(METRICS_NAME, f"model/{METRICS_NAME}", f"final/{METRICS_NAME}")
    data.docs["train_summary"] = first(f"model/{TRAIN_SUMMARY}", f"final/{TRAIN_SUMMARY}", TRAIN_SUMMARY)
    data.docs["packing"] = first(f"model/{PACKING_NAME}", f"final/{PACKING_NAME}", PACKING_NAME)
    evals = sorted((run / "eval").glob("*.summary.json")) if (run / "eval").is_dir() else []
    data.docs["eval"] = _read_json(evals[0]) if evals else None
    return data


def load_s3(uri: str, endpoint_url: str | None = None) -> RunData:
    from qa_train.storage import S3Location, list_keys

    store = RunStore(RunLayout(uri.rstrip("/")), endpoint_url)
    data = RunData(uri)

    def get(name: str) -> Any:
        text = store.get_text(name)
        try:
            return None if text is None else json.loads(text)
        except ValueError:
            return None

    data.docs["report"] = get(REPORT_NAME)
    data.docs["metrics"] = get(METRICS_NAME)
    data.docs["train_summary"] = get(f"final/{TRAIN_SUMMARY}")
    data.docs["packing"] = get(f"final/{PACKING_NAME}")
    loc = S3Location.parse(store.layout.child("eval"))
    names = sorted(k.rsplit("/", 1)[-1] for k in list_keys(store.client, loc.bucket, loc.dir_prefix))
    summary = next((n for n in names if n.endswith(".summary.json")), None)
    data.docs["eval"] = get(f"eval/{summary}") if summary else None
    return data


def add_costs(data: RunData, status_json: Path) -> None:
    """Launches with prices from ``submit.py status JOB --json`` (the registry's record)."""
    doc = json.loads(status_json.read_text(encoding="utf-8"))
    launches = doc.get("launches") if isinstance(doc, dict) else None
    if isinstance(launches, list):
        out = []
        for x in launches:
            price, start, end = x.get("price_per_hour"), x.get("started_at"), x.get("ended_at")
            hours = (end - start) / 3600.0 if start is not None and end is not None else None
            cost = price * hours if price is not None and hours is not None else None
            out.append({**x, "hours": hours, "cost_usd": cost})
        data.docs["costs"] = {"launches": out, "total_usd": doc.get("cost_usd")}


# -- plots ---------------------------------------------------------------------------------------------------


def _resume_steps(data: RunData) -> list[int]:
    """Steps where a launch resumed training (metrics segments after the first; train_summary resumed_from)."""
    steps = {int(s.get("start_step", 0)) for s in ((data.get("metrics") or {}).get("segments") or [])[1:]}
    resumed = (data.get("train_summary") or {}).get("resumed_from")
    if isinstance(resumed, str) and (m := re.search(r"checkpoint-(\d+)", resumed)):
        steps.add(int(m.group(1)))
    return sorted(steps)


def render_plots(data: RunData, out: Path) -> list[tuple[str, str]]:
    """(file name, title) of each PNG written; plots without data are skipped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made: list[tuple[str, str]] = []

    def save(fig: Any, name: str, title: str) -> None:
        fig.tight_layout()
        fig.savefig(out / name, dpi=90)
        plt.close(fig)
        made.append((name, title))

    hist = (data.get("metrics") or {}).get("history") or []
    marks = _resume_steps(data)

    def series(key: str) -> tuple[list[float], list[float]]:
        pts = [(p["step"], p[key]) for p in hist if p.get(key) is not None]
        return [s for s, _ in pts], [v for _, v in pts]

    xs, ys = series("loss")
    ex, ey = series("eval_loss")
    if xs or ex:
        fig, ax = plt.subplots(figsize=(7, 4))
        if xs:
            ax.plot(xs, ys, label="train loss", color="tab:blue")
        if ex:
            ax.plot(ex, ey, "o-", label="eval loss", color="tab:orange")
        for i, s in enumerate(marks):
            ax.axvline(s, color="tab:red", linestyle="--", label="resumed" if i == 0 else None)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.legend()
        ax.grid(alpha=0.3)
        save(fig, "loss.png", "Train and eval loss (dashed: preemption / resume)")
    for key, name, title, label in (
        ("lr", "lr.png", "Learning rate", "learning rate"),
        ("tokens_per_second", "throughput.png", "Throughput (non-padding tokens/s, all ranks)", "tokens/s"),
    ):
        sx, sy = series(key)
        if sx:
            fig, ax = plt.subplots(figsize=(7, 3))
            ax.plot(sx, sy, color="tab:green")
            for s in marks:
                ax.axvline(s, color="tab:red", linestyle="--")
            ax.set_xlabel("step")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
            save(fig, name, title)
    pk = data.get("packing")
    if pk and pk.get("sample_length_hist"):
        panels = [("sample_length_hist", "sample length (tokens)", "samples")]
        if pk.get("fill_hist"):
            panels.append(("fill_hist", "fill per pack (tokens / max_length)", "packs"))
        fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.5), squeeze=False)
        for ax, (key, xlabel, ylabel) in zip(axes[0], panels, strict=True):
            h = pk[key]
            n = len(h["counts"])
            width = (h["hi"] - h["lo"]) / n
            ax.bar([h["lo"] + (i + 0.5) * width for i in range(n)], h["counts"], width=width * 0.9)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
        save(fig, "packing.png", "Packing: sample lengths and fill per pack")
    ev = data.get("eval")
    if ev and ev.get("recall") is not None:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        keys = ["recall", "containing_acc"]
        ax.bar([0, 2], [ev[k] for k in keys], width=0.8, label="this run")
        ax.bar([1, 3], [SEED_ROW[k] for k in keys], width=0.8, label=SEED_ROW["model"])
        ax.set_xticks([0.5, 2.5], keys)
        ax.set_ylim(0, 1)
        ax.legend()
        save(fig, "eval.png", "HotpotQA eval next to the seed's published row")
    launches = [x for x in ((data.get("costs") or {}).get("launches") or []) if x.get("cost_usd") is not None]
    if launches:
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.bar([str(x.get("n", i + 1)) for i, x in enumerate(launches)], [x["cost_usd"] for x in launches])
        ax.set_xlabel("launch")
        ax.set_ylabel("USD")
        save(fig, "cost.png", "Cost per launch")
    return made


# -- HTML ----------------------------------------------------------------------------------------------------


def fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return html.escape(str(v))
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return f"{v:.6g}"
    return html.escape(str(v))


def _row(label: str, value: Any, src: str) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f'<tr><th>{html.escape(label)}</th><td class="num" data-src="{src}">{fmt(value)}</td></tr>'
    return f"<tr><th>{html.escape(label)}</th><td>{fmt(value)}</td></tr>"


def _table(title: str, doc: dict[str, Any] | None, source: str, keys: list[str]) -> str:
    if not doc:
        return ""
    rows = [_row(k, doc[k], f"{source}.{k}") for k in keys if k in doc and doc[k] is not None]
    return f"<h2>{html.escape(title)}</h2><table>{''.join(rows)}</table>" if rows else ""


def render_html(data: RunData, plots: list[tuple[str, str]]) -> str:
    rep = data.get("report") or {}
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>run report {html.escape(str(rep.get('run_name', '')))}</title>",
        "<style>body{font-family:sans-serif;max-width:960px;margin:2em auto}table{border-collapse:collapse}"
        "th,td{border:1px solid #ccc;padding:2px 8px;text-align:left}td.num{text-align:right}</style>",
        "</head><body>",
        f"<h1>Run {html.escape(str(rep.get('run_name', data.source)))}</h1>",
        f"<p>source: {html.escape(data.source)}; state: {html.escape(str(rep.get('state', 'unknown')))}</p>",
    ]
    parts.append(_table("Run report", rep, "report", ["launch", "last_committed_step"]))
    if rep.get("stages"):
        rows = "".join(
            f"<tr><td>{html.escape(s['name'])}</td>"
            + "".join(
                f'<td class="num" data-src="report.stages.{i}.{k}">{fmt(s[k])}</td>' if s.get(k) is not None
                else "<td>-</td>" for k in ("exit_code", "seconds")
            )
            + f"<td>{'skipped' if s.get('skipped') else ''}</td></tr>"
            for i, s in enumerate(rep["stages"])
        )  # fmt: skip
        parts.append(
            f"<h2>Stages</h2><table><tr><th>stage</th><th>exit</th><th>seconds</th><th></th></tr>{rows}</table>"
        )
    parts.append(_table("Training", data.get("train_summary"), "train_summary",
                        ["global_step", "train_loss", "eval_loss", "train_tokens", "tokens_per_second",
                         "num_samples", "num_packs", "lower_bound_packs", "packing_efficiency", "resumed_from"]))  # fmt: skip
    parts.append(_table("Live metrics (last)", data.get("metrics"), "metrics",
                        ["step", "max_steps", "epoch", "train_loss", "eval_loss", "learning_rate",
                         "tokens_per_second", "gpu_memory_gb"]))  # fmt: skip
    parts.append(_table("Packing", data.get("packing"), "packing",
                        ["max_length", "num_samples", "sample_length_mean", "sample_length_max", "num_packs",
                         "fill_mean", "fill_min"]))  # fmt: skip
    ev = data.get("eval")
    if ev:
        rows = "".join(
            f"<tr><th>{k}</th>"
            + (f'<td class="num" data-src="eval.{k}">{fmt(ev[k])}</td>' if ev.get(k) is not None else "<td>-</td>")
            + f'<td class="num" data-src="seed.{k}">{fmt(SEED_ROW[k])}</td></tr>'
            for k in ("recall", "containing_acc")
        )  # fmt: skip
        extra = "".join(_row(k, ev[k], f"eval.{k}") for k in ("num_questions", "multi_hop_rate", "avg_hops")
                        if ev.get(k) is not None)  # fmt: skip
        parts.append(f"<h2>HotpotQA eval</h2><table><tr><th></th><th>this run</th>"
                     f"<th>{html.escape(SEED_ROW['model'])}</th></tr>{rows}</table><table>{extra}</table>")  # fmt: skip
    costs = data.get("costs")
    if costs and costs.get("launches"):
        rows = ""
        for i, x in enumerate(costs["launches"]):
            cells = "".join(
                f'<td class="num" data-src="costs.launches.{i}.{k}">{fmt(x[k])}</td>' if x.get(k) is not None
                else "<td>-</td>" for k in ("price_per_hour", "hours", "cost_usd")
            )  # fmt: skip
            rows += f"<tr><td>{html.escape(str(x.get('backend')))} {html.escape(str(x.get('instance_id')))}</td>{cells}</tr>"
        parts.append(f"<h2>Cost per launch</h2><table><tr><th>launch</th><th>$/h</th><th>hours</th><th>USD</th></tr>"
                     f"{rows}</table>")  # fmt: skip
    for name, title in plots:
        parts.append(f"<h2>{html.escape(title)}</h2><img src='{name}' alt='{html.escape(title)}'>")
    parts.append("</body></html>\n")
    return "\n".join(p for p in parts if p)


def make_report(data: RunData, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    plots = render_plots(data, out)
    page = out / "report.html"
    page.write_text(render_html(data, plots), encoding="utf-8")
    return page


def upload_report(store: RunStore, out: Path) -> str:
    """Every file of ``out`` to ``<run>/report/`` (one PUT each; the HTML last so its images are there)."""
    files = sorted((p for p in out.iterdir() if p.is_file()), key=lambda p: p.name == "report.html")
    for p in files:
        ctype = (
            "text/html" if p.suffix == ".html" else "image/png" if p.suffix == ".png" else "application/json"
        )
        store.put_bytes(f"{REPORT_DIR}/{p.name}", p.read_bytes(), ctype)
    return store.layout.child(REPORT_DIR)


def make_run_report(run_dir: Path, store: RunStore | None) -> None:
    """``qa_train run``'s last step: render from the local run folder, upload with sync. Warnings only."""
    out = run_dir / REPORT_DIR
    try:
        page = make_report(load_local(run_dir), out)
        print(f"[run] report: {page}", file=sys.stderr, flush=True)
    except Exception as e:  # noqa: BLE001 - the run's outcome is settled; the report is for people
        print(
            f"[run] warning: cannot render the run report: {type(e).__name__}: {e}",
            file=sys.stderr,
            flush=True,
        )
        return
    if store is not None:
        try:
            print(f"[run] report uploaded to {upload_report(store, out)}/", file=sys.stderr, flush=True)
        except Exception as e:  # noqa: BLE001
            print(f"[run] warning: cannot upload the run report: {type(e).__name__}: {e}", file=sys.stderr,
                  flush=True)  # fmt: skip


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m qa_train report", description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="local run folder or s3://…/<run_name>")
    p.add_argument("--out", required=True, help="folder for report.html and the PNGs")
    p.add_argument("--costs", default=None, help="output of `python launch/submit.py status JOB --json`")
    p.add_argument("--s3_endpoint_url", default=None, help="S3 endpoint (else AWS_ENDPOINT_URL)")
    p.add_argument(
        "--upload", action="store_true", help="also upload the report to <run>/report/ (s3 RUN only)"
    )
    a = p.parse_args(argv)
    if a.run.startswith("s3://"):
        try:
            data = load_s3(a.run, a.s3_endpoint_url)
        except Exception as e:  # noqa: BLE001 - storage: one line, exit 3
            print(f"error: cannot read {a.run}: {type(e).__name__}: {e}", file=sys.stderr)
            return 3
    else:
        if not Path(a.run).is_dir():
            print(f"error: {a.run}: no such run folder", file=sys.stderr)
            return 2
        data = load_local(Path(a.run))
    if not any(data.docs.values()):
        print(f"error: {a.run}: no report.json, metrics.json, train or eval summary found", file=sys.stderr)
        return 2
    if a.costs:
        try:
            add_costs(data, Path(a.costs))
        except (OSError, ValueError) as e:
            print(f"error: --costs {a.costs}: {e}", file=sys.stderr)
            return 2
    page = make_report(data, Path(a.out))
    print(page)
    if a.upload and a.run.startswith("s3://"):
        print(upload_report(RunStore(RunLayout(a.run.rstrip("/")), a.s3_endpoint_url), Path(a.out)) + "/")
    return 0
