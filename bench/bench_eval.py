"""Benchmark: batched agent loop vs one question at a time (the original's way), same outputs.

CPU, a tiny random llama (tokenizer trained on the HotpotQA sample), hf backend, greedy, bm25 retrieval.
Prints questions/s for both and their ratio (target >= 4x), plus a JSON line.

    python bench/bench_eval.py [--n 64] [--batch_size 64] [--max_new_tokens 64] [--train_steps 300]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
SAMPLE = REPO.parent / "shared" / "data" / "hotpot_dev_distractor_v1_random_500.json"


def load_questions(n: int, tmp: Path) -> tuple[Path, list[dict], str]:
    if SAMPLE.is_file():
        return SAMPLE, json.loads(SAMPLE.read_text())[:n], str(SAMPLE)
    from qa_train.data.synthetic import make_hotpot

    path = tmp / "hotpot.json"
    records = make_hotpot(n, seed=0)
    path.write_text(json.dumps(records))
    return path, records, "synthetic (make_hotpot)"


def build_model(tmp: Path, data: Path, hidden: int, layers: int) -> Path:
    """Tiny llama + QA tokens (resized), saved like a merged model."""
    import torch
    from transformers import AutoModelForCausalLM

    from qa_train.modeling import load_tokenizer, resize_embeddings
    from qa_train.tiny_model import make_tiny_model

    base = make_tiny_model(
        tmp / "base", arch="llama", data=data, vocab_size=1024, hidden_size=hidden, num_layers=layers
    )
    tok = load_tokenizer(str(base))
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    resize_embeddings(model, tok)
    out = tmp / "merged"
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


def teach_format(model_dir: Path, records: list[dict], steps: int, seed: int = 0) -> dict:
    """A few hundred full fine-tuning steps on converted HotpotQA (disjoint from the benchmark questions) so the
    tiny model really emits ``retrieve`` calls and the loop runs several rounds, as with a trained model."""
    import random

    import torch
    from transformers import AutoModelForCausalLM

    from qa_train.data.hotpot import convert_record
    from qa_train.data.prompt import render
    from qa_train.data.records import record_to_messages
    from qa_train.modeling import load_tokenizer

    tok = load_tokenizer(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    examples = []
    for i, rec in enumerate(records):
        try:
            conv = convert_record(rec, "train", i)
        except ValueError:
            continue
        rendered = render(record_to_messages(conv))
        enc = tok(rendered.text, return_offsets_mapping=True, truncation=True, max_length=512)
        labels = [
            t if any(a <= s < b for a, b in rendered.loss_spans) else -100
            for t, (s, _) in zip(enc["input_ids"], enc["offset_mapping"], strict=True)
        ]
        examples.append((enc["input_ids"], labels))
    rng = random.Random(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    loss = torch.tensor(0.0)
    for _ in range(steps):
        batch = rng.sample(examples, 8)
        width = max(len(x) for x, _ in batch)
        ids = torch.tensor([x + [tok.pad_token_id] * (width - len(x)) for x, _ in batch])
        lab = torch.tensor([y + [-100] * (width - len(y)) for _, y in batch])
        mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x, _ in batch])
        loss = model(input_ids=ids, attention_mask=mask, labels=lab).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(str(model_dir))
    return {"train_examples": len(examples), "train_steps": steps, "final_loss": round(loss.item(), 4)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--max_new_tokens", type=int, default=64)
    p.add_argument("--max_hops", type=int, default=5)
    p.add_argument("--hidden_size", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--model_cache", default=None, help="folder to keep/reuse the taught model between runs")
    p.add_argument("--show", type=int, default=0, help="print the first N results")
    p.add_argument("--train_steps", type=int, default=300, help="format-teaching steps (0: random model)")
    args = p.parse_args()

    import torch
    from transformers.utils import logging as hf_logging

    from qa_train.inference.agent import AgentStats, run_agent
    from qa_train.inference.backends import HFBackend
    from qa_train.retrieval import make_retriever_factory, paragraphs_from_context

    hf_logging.set_verbosity_error()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        data, records, source = load_questions(args.n, tmp)
        cached = Path(args.model_cache) if args.model_cache else None
        if cached is not None and (cached / "train_info.json").is_file():
            model, train_info = cached, json.loads((cached / "train_info.json").read_text())
        else:
            model = build_model(tmp, data, args.hidden_size, args.layers)
            train_info = {"train_steps": 0}
            if args.train_steps and SAMPLE.is_file():
                train_info = teach_format(model, json.loads(SAMPLE.read_text())[args.n :], args.train_steps)
            if cached is not None:
                shutil.copytree(model, cached, dirs_exist_ok=True)
                (cached / "train_info.json").write_text(json.dumps(train_info))
        print(f"model: {train_info}")
        backend = HFBackend(str(model), max_new_tokens=args.max_new_tokens, dtype="float32")
        factory = make_retriever_factory("bm25", 1)
        questions = [r["question"] for r in records]
        retrievers = [factory(paragraphs_from_context(r["context"])) for r in records]
        backend.generate(["warm up"])

        stats = AgentStats()
        c0, t0 = time.process_time(), time.perf_counter()
        batched = run_agent(questions, retrievers, backend, batch_size=args.batch_size, max_hops=args.max_hops,
                            stats=stats)  # fmt: skip
        t_batched, c_batched = time.perf_counter() - t0, time.process_time() - c0

        c0, t0 = time.process_time(), time.perf_counter()
        single = [run_agent([q], [r], backend, batch_size=1, max_hops=args.max_hops)[0]
                  for q, r in zip(questions, retrievers, strict=True)]  # fmt: skip
        t_single, c_single = time.perf_counter() - t0, time.process_time() - c0

    for r in batched[: args.show]:
        print(json.dumps(r.to_dict(), ensure_ascii=False)[:1500])
    same = [a.to_dict() for a in batched] == [b.to_dict() for b in single]
    n_same = sum(a.to_dict() == b.to_dict() for a, b in zip(batched, single, strict=True))
    qps_b, qps_s = len(questions) / t_batched, len(questions) / t_single
    result = {
        "questions": len(questions),
        "source": source,
        "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens,
        "model": f"tiny llama hidden={args.hidden_size} layers={args.layers}",
        "torch_threads": torch.get_num_threads(),
        **train_info,
        "rounds": stats.rounds,
        "num_errors": sum(1 for r in batched if r.error),
        "avg_hops": sum(r.hops for r in batched) / len(batched),
        "batched_qps": qps_b,
        "one_at_a_time_qps": qps_s,
        "speedup": qps_b / qps_s,
        "batched_cpu_s": c_batched,
        "one_at_a_time_cpu_s": c_single,
        "cpu_speedup": c_single / c_batched,
        "same_outputs": same,
        "identical_questions": n_same,
    }
    print(
        f"questions: {len(questions)} ({source}); rounds: {stats.rounds}; threads: {torch.get_num_threads()}"
    )
    print(f"batched (batch_size={args.batch_size}): {qps_b:8.2f} q/s  ({t_batched:.2f} s)")
    print(f"one question at a time:        {qps_s:8.2f} q/s  ({t_single:.2f} s)")
    print(f"CPU seconds: batched {c_batched:.1f}, one at a time {c_single:.1f} ({c_single / c_batched:.2f}x)")
    print(f"speedup: {qps_b / qps_s:.2f}x   same outputs: {same} ({n_same}/{len(questions)})")
    print(json.dumps(result))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
