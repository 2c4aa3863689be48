"""End to end on the tiny model: train (LoRA) → merge → eval 8 questions (+ summaries to S3), as subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qa_train.evaluate.cli import SUMMARY_KEYS

REPO = Path(__file__).resolve().parent.parent


def _run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "qa_train", *args], cwd=REPO, env=env or dict(os.environ),
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, f"{args[0]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


@pytest.mark.slow
def test_train_lora_merge_eval(
    tiny_llama: Path, records_file: Path, hotpot_file: Path, tmp_path: Path, s3
) -> None:
    adapter = tmp_path / "adapter"
    _run([
        "train", "--model_name_or_path", str(tiny_llama), "--train_path", str(records_file),
        "--output_dir", str(adapter), "--use_lora", "True", "--max_steps", "3", "--learning_rate", "1e-3",
        "--per_device_train_batch_size", "2", "--packing", "False", "--model_max_length", "256",
        "--report_to", "none", "--use_cpu", "True", "--save_strategy", "no", "--disable_tqdm", "True",
    ])  # fmt: skip
    assert (adapter / "adapter_config.json").is_file()

    merged = tmp_path / "merged"
    _run(["merge", "--save_folder", str(merged), "--pretrained_path", str(tiny_llama), "--checkpoint", str(adapter),
          "--model_type", "llama"])  # fmt: skip
    assert (merged / "model.safetensors").is_file()

    save = tmp_path / "eval" / "hotpot.jsonl"
    proc = _run(
        ["eval", "--model_path", str(merged), "--hotpot_qa_dev_path", str(hotpot_file), "--inference_type", "hf",
         "--save_path", str(save), "--limit", "8", "--batch_size", "4", "--max_new_tokens", "24", "--max_hops", "2",
         "--sync_to", s3.uri("runs"), "--run_name", "e2e"],
        env=s3.env,
    )  # fmt: skip
    summary = json.loads(save.with_name("hotpot.summary.json").read_text())
    assert set(SUMMARY_KEYS) <= set(summary)
    assert (
        summary["num_questions"] == 8 and 0 <= summary["recall"] <= 1 and summary["questions_per_second"] > 0
    )
    assert len(save.read_text().splitlines()) == 8
    assert "containing_acc" in proc.stdout  # the printed table
    keys = s3.keys("runs/e2e/eval/")
    assert "runs/e2e/eval/hotpot.jsonl" in keys and "runs/e2e/eval/hotpot.summary.json" in keys
