"""Quality bench: does a short LoRA run teach a real model the QA Expert tool format? Base vs fine-tuned.

SmolLM2-135M-Instruct (``python -m qa_train make-demo-model``, offline) is trained with LoRA + the trainable
rows of the three QA tokens on HotpotQA questions converted by ``convert-hotpot``, merged, and both the base
and the merged model are evaluated with the multi-hop agent loop on *other* HotpotQA questions (the split is
by position in ``../shared/data/hotpot_dev_distractor_v1_random_500.json`` and checked disjoint by id).
Everything goes through the CLI a user runs (train, merge, eval as subprocesses), on CPU.

    nice -n 19 python bench/quality.py [--eval_questions 100] [--max_steps 60] [--work DIR]

Writes ``<work>/quality.json`` after every phase (partial numbers survive an interrupted run) and prints a
markdown table for bench/RESULTS.md. The data is read from ../shared and written only under ``--work``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
SAMPLE = REPO.parent / "shared" / "data" / "hotpot_dev_distractor_v1_random_500.json"
SEED_7B = {"recall": 0.7257, "containing_acc": 0.668}  # khaimaitien/qa-expert-7B-V1.0, original README


THREADS = {"n": 1}


def _run(cmd: list[str], log: Path) -> float:
    """Run one qa_train command (output to ``log``); returns its wall time, raises with the log's tail.

    Torch threads are capped (``--threads``, default 1): on a shared, niced machine two OpenMP threads spin
    waiting for each other while one is descheduled — measured here under load 5: 24 greedy decode steps
    (batch 4, SmolLM2) took 87 s with 2 threads and 14 s with 1."""
    t0 = time.monotonic()
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS["n"]), "MKL_NUM_THREADS": str(THREADS["n"])}
    with open(log, "w") as fh:
        rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO, env=env).returncode
    took = time.monotonic() - t0
    if rc != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-15:])
        raise SystemExit(f"{' '.join(cmd[:4])} … failed (exit {rc}) after {took:.0f}s; {log}:\n{tail}")
    return took


def split(work: Path, eval_questions: int, train_questions: int | None) -> tuple[Path, Path, dict[str, Any]]:
    """Last ``eval_questions`` of the sample for eval, the others (or the first ``train_questions``) for training."""
    data = json.loads(SAMPLE.read_text())
    if eval_questions >= len(data):
        raise SystemExit(f"--eval_questions {eval_questions}: the sample has only {len(data)} questions")
    evals = data[len(data) - eval_questions :]
    train = data[: len(data) - eval_questions]
    if train_questions is not None:
        train = train[:train_questions]
    overlap = {r["_id"] for r in train} & {r["_id"] for r in evals}
    assert not overlap, f"train and eval share {len(overlap)} question ids"
    train_path, eval_path = work / "hotpot_train.json", work / "hotpot_eval.json"
    train_path.write_text(json.dumps(train))
    eval_path.write_text(json.dumps(evals))
    return train_path, eval_path, {"train_questions": len(train), "eval_questions": len(evals), "overlap": 0}


def evaluate(model: Path, hotpot: Path, out: Path, args: argparse.Namespace, log: Path) -> dict[str, Any]:
    py = [sys.executable, "-m", "qa_train"]
    took = _run([*py, "eval", "--model_path", str(model), "--hotpot_qa_dev_path", str(hotpot),
                 "--save_path", str(out), "--batch_size", str(args.eval_batch_size),
                 "--max_new_tokens", str(args.max_new_tokens), "--dtype", "float32", "--no_progress"], log)  # fmt: skip
    summary = json.loads(out.with_name(out.stem + ".summary.json").read_text())
    summary["eval_wall_s"] = took
    return summary


def bof_probability(model_dir: Path, records: list[dict[str, Any]], how: str = "text") -> dict[str, float]:
    """Teacher-forced p(<|bof|>) where each record's first call starts, and how often it is the argmax; a
    base model gets the QA tokens added here with ``how`` as the row initialisation (a merged one has them)."""
    import torch
    from transformers import AutoModelForCausalLM

    from qa_train.data.prompt import BOF, render
    from qa_train.data.records import record_to_messages
    from qa_train.modeling import load_tokenizer, resize_embeddings

    tok = load_tokenizer(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    resize_embeddings(model, tok, how)
    bof = tok.convert_tokens_to_ids(BOF)
    probs, top = [], []
    for rec in records:
        text = render(record_to_messages(rec)).text
        prefix = text[: text.index(BOF)]
        ids = tok(prefix, return_tensors="pt", add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, -1]
        probs.append(float(torch.softmax(logits.float(), -1)[bof]))
        top.append(float(int(logits.argmax()) == bof))
    return {"p_bof": sum(probs) / len(probs), "bof_top1": sum(top) / len(top), "n": len(records)}


def probe(base: Path, merged: Path, eval_hotpot: Path, n: int = 50) -> dict[str, Any]:
    """p(<|bof|>) at the first call of ``n`` held-out (eval) questions: base with mean / text rows, tuned."""
    from qa_train.data.hotpot import convert_record

    recs = [convert_record(r, "eval", i) for i, r in enumerate(json.loads(eval_hotpot.read_text())[:n])]
    return {
        "base_mean_init": bof_probability(base, recs, "mean"),
        "base_text_init": bof_probability(base, recs, "text"),
        "tuned": bof_probability(merged, recs),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="/tmp/qa-quality-bench", help="scratch folder (model, data, outputs)")
    ap.add_argument("--eval_questions", type=int, default=100)
    ap.add_argument("--train_questions", type=int, default=None, help="default: all the others (400)")
    ap.add_argument("--max_steps", type=int, default=60)
    ap.add_argument("--model_max_length", type=int, default=1024)
    ap.add_argument("--batch_packs", type=int, default=1, help="packs per optimizer step")
    ap.add_argument("--learning_rate", type=float, default=1e-3)
    ap.add_argument("--new_token_lr", type=float, default=None, help="default: train's (10 x learning_rate)")
    ap.add_argument("--new_token_init", default="text", choices=("text", "mean"))
    ap.add_argument("--lora_r", type=int, default=16)
    ap.add_argument("--eval_batch_size", type=int, default=20)
    ap.add_argument("--max_new_tokens", type=int, default=256)
    ap.add_argument("--skip_base", action="store_true", help="reuse <work>/eval_base (same eval questions)")
    ap.add_argument("--reuse_train", action="store_true", help="reuse <work>/adapter and its recorded timing")
    ap.add_argument("--threads", type=int, default=1, help="torch/OpenMP threads of each step (see _run)")
    args = ap.parse_args()
    THREADS["n"] = args.threads
    import torch

    torch.set_num_threads(args.threads)  # the in-process probe too

    from qa_train.demo_model import make_demo_model

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"args": vars(args), "nice": os.nice(0), "cpus": os.cpu_count()}
    out_json = work / "quality.json"

    def save() -> None:
        out_json.write_text(json.dumps(results, indent=2) + "\n")

    base = make_demo_model(work / "smollm2")
    train_hotpot, eval_hotpot, counts = split(work, args.eval_questions, args.train_questions)
    results["split"] = counts
    py = [sys.executable, "-m", "qa_train"]
    train_records = work / "train.json"
    _run([*py, "convert-hotpot", str(train_hotpot), str(train_records)], work / "convert.log")

    adapter, merged = work / "adapter", work / "merged"
    train_cmd = [*py, "train", "--model_name_or_path", str(base), "--train_path", str(train_records),
                 "--output_dir", str(adapter), "--use_lora", "True", "--lora_r", str(args.lora_r),
                 "--lora_alpha", str(2 * args.lora_r), "--lora_dropout", "0.0", "--packing", "True",
                 "--model_max_length", str(args.model_max_length), "--max_steps", str(args.max_steps),
                 "--per_device_train_batch_size", str(args.batch_packs), "--learning_rate", str(args.learning_rate),
                 "--lr_scheduler_type", "cosine", "--warmup_steps", "3", "--logging_steps", "1",
                 "--save_strategy", "no", "--report_to", "none", "--seed", "0",
                 "--new_token_init", args.new_token_init, "--disable_tqdm", "True"]  # fmt: skip
    if args.new_token_lr is not None:
        train_cmd += ["--new_token_lr", str(args.new_token_lr)]
    results["train_command"] = " ".join(train_cmd[1:])
    if args.reuse_train and out_json.is_file() and (adapter / "train_summary.json").is_file():
        previous = json.loads(out_json.read_text())
        results["train"], results["train_command"] = previous["train"], previous["train_command"]
        results["train"]["threads"] = previous["args"].get("threads", "torch default (2)")
        train_s, summary = results["train"]["wall_s"], results["train"]
    else:
        train_s = _run(train_cmd, work / "train.log")
        summary = json.loads((adapter / "train_summary.json").read_text())
        results["train"] = {**summary, "wall_s": train_s, "threads": args.threads,
                            "adapter_bytes": (adapter / "adapter_model.safetensors").stat().st_size}  # fmt: skip
    save()
    print(
        f"trained {summary['global_step']} steps in {train_s:.0f}s, loss {summary['train_loss']:.3f}",
        flush=True,
    )

    if not (args.reuse_train and (merged / "qa_train_complete.json").is_file()):
        _run(
            [*py, "merge", str(merged), str(base), str(adapter), "--torch_dtype", "float32"],
            work / "merge.log",
        )
    results["p_bof"] = probe(base, merged, eval_hotpot)
    save()
    results["tuned"] = evaluate(
        merged, eval_hotpot, work / "eval_tuned" / "preds.jsonl", args, work / "eval_tuned.log"
    )
    save()
    print(
        f"tuned: {json.dumps({k: results['tuned'][k] for k in ('recall', 'containing_acc', 'multi_hop_rate')})}"
    )
    if not (args.skip_base and (work / "eval_base" / "preds.summary.json").is_file()):
        results["base"] = evaluate(
            base, eval_hotpot, work / "eval_base" / "preds.jsonl", args, work / "eval_base.log"
        )
    else:
        results["base"] = json.loads((work / "eval_base" / "preds.summary.json").read_text())
    save()
    print(table(results))


def table(r: dict[str, Any]) -> str:
    """Markdown rows: base, fine-tuned, the seed's 7B."""
    t = r["train"]
    head = ("| model | recall | containing-acc | multi_hop_rate | avg_hops | train time | train tokens/s |\n"
            "|---|---:|---:|---:|---:|---:|---:|")  # fmt: skip
    rows = [head]
    for name, key in (("SmolLM2-135M-Instruct (base)", "base"), ("+ LoRA, this recipe", "tuned")):
        s = r.get(key)
        if not s:
            continue
        timing = f"{t['wall_s'] / 60:.1f} min | {t['tokens_per_second']:.0f}" if key == "tuned" else "– | –"
        rows.append(f"| {name} | {s['recall']:.4f} | {s['containing_acc']:.4f} | {s['multi_hop_rate']:.2f} | "
                    f"{s['avg_hops']:.2f} | {timing} |")  # fmt: skip
    rows.append(f"| qa-expert-7B-V1.0 (seed, original README) | {SEED_7B['recall']} | {SEED_7B['containing_acc']} "
                "| – | – | – | – |")  # fmt: skip
    return "\n".join(rows)


if __name__ == "__main__":
    main()
