"""Write a small synthetic training set and HotpotQA dev set for the container smoke job.

Why: CI machines may have no copy of the real data, and the smoke job must not download anything. The records
follow the real formats (QA Expert training records; HotpotQA dev-distractor records) so the same code paths
run: validation, tokenization, packing, the agent loop and the metrics.

Usage: python smoke_data.py OUT_DIR [--train 64] [--validation 8] [--hotpot 8] [--seed 0]
Writes OUT_DIR/train.json, OUT_DIR/validation.json, OUT_DIR/hotpot_dev.json (atomically: temp file + rename).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from pathlib import Path

WORDS = (
    "river city state king queen film album band mountain island war treaty president author novel capital "
    "founded born died year century company league team season museum bridge university school harbor castle"
).split()


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def training_records(n: int, rng: random.Random) -> list[dict]:
    """QA Expert records; every second one is multi-hop (two sub-questions)."""
    out = []
    for i in range(n):
        hops = 2 if i % 2 else 1
        subs = []
        for _ in range(hops):
            answer = rng.choice(WORDS)
            subs.append(
                {
                    "question": sentence(rng, rng.randint(4, 9))[:-1] + "?",
                    "answer": answer,
                    "paragraph": " ".join(sentence(rng, rng.randint(8, 30)) for _ in range(2)),
                    "long_answer": sentence(rng, rng.randint(5, 12)) + "\nAnswer: " + answer,
                }
            )
        final = subs[-1]["answer"]
        out.append(
            {
                "question": sentence(rng, rng.randint(5, 12))[:-1] + "?",
                "answer": final,
                "multihop": hops > 1,
                "sub_questions": subs,
                "final_answer": sentence(rng, rng.randint(5, 15)) + "\nAnswer: " + final,
            }
        )
    return out


def hotpot_records(n: int, rng: random.Random) -> list[dict]:
    """HotpotQA dev-distractor records (bridge and comparison), answer stated in a supporting sentence."""
    out = []
    for i in range(n):
        titles = [f"{rng.choice(WORDS).title()} {i}-{k}" for k in range(4)]
        context = [[t, [sentence(rng, rng.randint(6, 12)) + " " for _ in range(3)]] for t in titles]
        answer = rng.choice(WORDS)
        context[0][1][1] = f"The answer is {answer}. "
        out.append(
            {
                "_id": f"smoke{i:04d}",
                "question": f"What is the {rng.choice(WORDS)} of {titles[0]}?",
                "answer": answer,
                "type": "bridge" if i % 2 else "comparison",
                "level": "medium",
                "supporting_facts": [[titles[0], 1], [titles[1], 0]] if i % 2 else [[titles[0], 1]],
                "context": context,
            }
        )
    return out


def write_json(path: Path, data: list[dict]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out_dir", type=Path)
    p.add_argument("--train", type=int, default=64)
    p.add_argument("--validation", type=int, default=8)
    p.add_argument("--hotpot", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    a.out_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(a.seed)
    write_json(a.out_dir / "train.json", training_records(a.train, rng))
    write_json(a.out_dir / "validation.json", training_records(a.validation, rng))
    write_json(a.out_dir / "hotpot_dev.json", hotpot_records(a.hotpot, rng))
    print(
        json.dumps(
            {"out_dir": str(a.out_dir), "train": a.train, "validation": a.validation, "hotpot": a.hotpot}
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
