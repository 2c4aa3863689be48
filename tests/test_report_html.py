"""``python -m qa_train report`` from a real smoke run (tiny model, train → merge → eval, synced to SeaweedFS):
the PNGs decode and are not blank, and every number in the HTML equals the summary it came from."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from qa_train.report_html import SEED_ROW
from tests.conftest import REPO

NUM_CELL = re.compile(r'<td class="num" data-src="([^"]+)">([^<]*)</td>')
ANY_CELL = re.compile(r"<td([^>]*)>([^<]*)</td>")


def _resolve(docs: dict, src: str):
    cur = docs
    for part in src.split("."):
        cur = cur[int(part)] if isinstance(cur, list) else cur[part]
    return cur


def check_numbers(page: str, docs: dict) -> int:
    """Every numeric cell names its source and equals it (6 significant digits); returns how many."""
    cells = NUM_CELL.findall(page)
    for src, text in cells:
        want = _resolve(docs, src)
        assert float(text) == pytest.approx(want, rel=1e-5, abs=1e-12), (src, text, want)
    for attrs, text in ANY_CELL.findall(page):  # no number hides in a cell without its source
        if re.fullmatch(r"\s*-?[\d.]+(e[-+]?\d+)?\s*", text):
            assert 'class="num"' in attrs and "data-src" in attrs, (attrs, text)
    return len(cells)


def check_pngs(folder: Path) -> list[str]:
    import numpy as np
    from PIL import Image

    names = sorted(p.name for p in folder.glob("*.png"))
    for name in names:
        with Image.open(folder / name) as im:
            im.load()
            px = np.asarray(im.convert("L"), dtype=np.float64)
        assert px.shape[0] > 100 and px.shape[1] > 100, name
        assert px.std() > 5.0, f"{name} looks blank (pixel std {px.std():.2f})"
    return names


def _read(path: Path):
    return json.loads(path.read_text())


@pytest.mark.slow
def test_smoke_run_report_plots_and_numbers(s3, tmp_path, records_file, validation_file, hotpot_file):
    job = {"run_name": "rpt", "model": {"make_tiny": {"arch": "llama", "vocab_size": 400, "hidden_size": 32}},
           "data": {"train_path": str(records_file), "validation_path": str(validation_file),
                    "hotpot_qa_dev_path": str(hotpot_file)},
           "training": {"max_steps": 6, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 1,
                        "eval_steps": 3, "logging_steps": 1, "save_strategy": "no", "model_max_length": 512,
                        "gradient_checkpointing": False, "learning_rate": 1e-3, "bf16": False, "tf32": False},
           "use_lora": True, "packing": True, "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
           "eval": {"limit": 4, "batch_size": 4}, "output_root": str(tmp_path / "out"),
           "sync": {"target": s3.uri("runs")}}  # fmt: skip
    spec = tmp_path / "job.json"
    spec.write_text(json.dumps(job))
    p = subprocess.run([sys.executable, "-m", "qa_train", "run", str(spec)], cwd=REPO, env=s3.env,
                       capture_output=True, text=True, timeout=900)  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    run = tmp_path / "out" / "rpt"
    page = (run / "report" / "report.html").read_text()
    names = check_pngs(run / "report")
    assert {"loss.png", "lr.png", "throughput.png", "packing.png", "eval.png"} <= set(names)
    eval_summary = next((run / "eval").glob("*.summary.json"))
    docs = {
        "report": _read(run / "report.json"),
        "train_summary": _read(run / "model" / "train_summary.json"),
        "metrics": _read(run / "model" / "metrics.json"),
        "packing": _read(run / "model" / "packing.json"),
        "eval": _read(eval_summary),
        "seed": SEED_ROW,
    }
    n = check_numbers(page, docs)
    srcs = {src for src, _ in NUM_CELL.findall(page)}
    assert {"train_summary.train_loss", "eval.recall", "seed.recall", "seed.containing_acc",
            "packing.fill_mean", "metrics.step"} <= srcs and n >= 20  # fmt: skip
    assert 'data-src="seed.recall">0.7257<' in page and 'data-src="seed.containing_acc">0.668<' in page
    keys = set(s3.keys("runs/rpt/report/"))
    assert {"runs/rpt/report/report.html", "runs/rpt/report/loss.png"} <= keys

    # the same report from the run in object storage, with cost per launch from `status --json`
    status = tmp_path / "status.json"
    launches = [{"n": 1, "backend": "vast", "instance_id": "7", "price_per_hour": 0.4, "started_at": 1000.0,
                 "ended_at": 4600.0}, {"n": 2, "backend": "vast", "instance_id": "9", "price_per_hour": 0.5,
                 "started_at": 5000.0, "ended_at": 5720.0}]  # fmt: skip
    status.write_text(json.dumps({"job_id": "j", "cost_usd": 0.5, "launches": launches}))
    out2 = tmp_path / "from-s3"
    p = subprocess.run([sys.executable, "-m", "qa_train", "report", s3.uri("runs/rpt"), "--out", str(out2),
                        "--costs", str(status)], cwd=REPO, env=s3.env, capture_output=True, text=True,
                       timeout=300)  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    page2 = (out2 / "report.html").read_text()
    assert "cost.png" in check_pngs(out2)
    costs = {"launches": [{**x, "hours": (x["ended_at"] - x["started_at"]) / 3600,
                           "cost_usd": x["price_per_hour"] * (x["ended_at"] - x["started_at"]) / 3600}
                          for x in launches]}  # fmt: skip
    remote_summary = json.loads(
        s3.client().get_object(Bucket=s3.bucket, Key="runs/rpt/final/train_summary.json")["Body"].read()
    )
    check_numbers(page2, {**docs, "train_summary": remote_summary, "costs": costs})
    assert 'data-src="costs.launches.0.cost_usd">0.4<' in page2


def test_report_refuses_an_empty_folder(tmp_path):
    p = subprocess.run([sys.executable, "-m", "qa_train", "report", str(tmp_path), "--out", str(tmp_path / "o")],
                       cwd=REPO, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert p.returncode == 2 and "no report.json" in p.stderr and not (tmp_path / "o").exists()
