"""Synthetic data in the real formats (QA Expert training records, HotpotQA dev-distractor records).

Tests, benchmarks and the container smoke job need data that exercises every code path — validation,
tokenization, packing, the agent loop, the metrics — without downloading anything. ``python -m qa_train
make-smoke-data OUT_DIR`` writes train.json, validation.json and hotpot_dev.json.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from qa_train.fsutil import ArgumentParser, UsageError, atomic_write_json, check_number, check_output

_WORDS = (
    "river city state king queen film album band river mountain island war treaty president author novel "
    "capital founded born died year century company league team season museum bridge university school"
).split()


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(n)).capitalize() + "."


def make_records(n: int, seed: int = 0, min_words: int = 8, max_words: int = 60) -> list[dict]:
    """Synthetic QA Expert records with varied lengths; half multi-hop."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        hops = 2 if i % 2 else 1
        subs = []
        for _ in range(hops):
            subs.append(
                {
                    "question": _sentence(rng, rng.randint(4, 10))[:-1] + "?",
                    "answer": rng.choice(_WORDS),
                    "paragraph": " ".join(
                        _sentence(rng, rng.randint(min_words, max_words)) for _ in range(2)
                    ),
                    "long_answer": _sentence(rng, rng.randint(5, 15)) + "\nAnswer: " + rng.choice(_WORDS),
                }
            )
        out.append(
            {
                "question": _sentence(rng, rng.randint(5, 12))[:-1] + "?",
                "answer": subs[-1]["answer"],
                "multihop": hops > 1,
                "sub_questions": subs,
                "final_answer": _sentence(rng, rng.randint(5, 20)) + "\nAnswer: " + subs[-1]["answer"],
            }
        )
    return out


def make_hotpot(n: int, seed: int = 0) -> list[dict]:
    """Synthetic HotpotQA dev-distractor records (bridge and comparison)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        titles = [f"{rng.choice(_WORDS).title()} {i}-{k}" for k in range(4)]
        context = [[t, [_sentence(rng, rng.randint(6, 14)) + " " for _ in range(3)]] for t in titles]
        answer = rng.choice(_WORDS)
        context[0][1][1] = f"The answer is {answer}. "
        out.append(
            {
                "_id": f"q{i}",
                "question": f"What is the {rng.choice(_WORDS)} of {titles[0]}?",
                "answer": answer,
                "type": "bridge" if i % 2 else "comparison",
                "level": "medium",
                "supporting_facts": [[titles[0], 1], [titles[1], 0]] if i % 2 else [[titles[0], 1]],
                "context": context,
            }
        )
    return out


def main(argv: list[str]) -> int:
    p = ArgumentParser(
        prog="python -m qa_train make-smoke-data", description=__doc__.splitlines()[0], allow_abbrev=False
    )
    p.add_argument("out_dir", type=Path)
    p.add_argument("--train", type=int, default=64)
    p.add_argument("--validation", type=int, default=8)
    p.add_argument("--hotpot", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    try:
        a = p.parse_args(argv)
        for name in ("train", "validation", "hotpot"):
            check_number(f"--{name}", getattr(a, name), getattr(a, name) >= 1, ">= 1")
        check_output(a.out_dir, "out_dir", {}, kind="folder")
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    atomic_write_json(a.out_dir / "train.json", make_records(a.train, seed=a.seed, max_words=30), indent=1)
    atomic_write_json(
        a.out_dir / "validation.json", make_records(a.validation, seed=a.seed + 1, max_words=30), indent=1
    )
    atomic_write_json(a.out_dir / "hotpot_dev.json", make_hotpot(a.hotpot, seed=a.seed + 2), indent=1)
    print(
        json.dumps(
            {"out_dir": str(a.out_dir), "train": a.train, "validation": a.validation, "hotpot": a.hotpot}
        )
    )
    return 0
