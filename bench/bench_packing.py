"""Packing benchmark: efficiency of bfd / ffd / next_fit, packs vs the lower bound, and planning time.

Targets (issue 2): bfd >= 99% efficiency and <= 0.2% above the lower bound at max_length 4096 on a realistic
length distribution; 1,000,000 lengths packed in <= 2 s.

Datasets:
* ``lognormal-25547``: lognormal lengths, median 600 tokens, sigma 0.8, clipped to [32, 4096] — the size of the
  original QA Expert training set (25,547 samples -> 5,173 packs with its next-fit packing);
* ``lognormal-1M``: the same distribution, 1,000,000 samples (timing);
* ``hotpot-*``: the HotpotQA dev sample converted with ``convert-hotpot`` and rendered in the training chat format;
  token counts from a byte-level BPE tokenizer trained locally on that text (vocab 4096, like ``make-tiny-model``;
  special tokens count as plain text), and a whitespace-word proxy. Only 500 samples, so also replicated x50.
* ``bfd-chunk1000`` shows what TRL-style BFD inside 1000-sample chunks gives, for comparison.

    python bench/bench_packing.py [--json bench/results/packing.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from qa_train.data.packing import PackingStats, pack_lengths  # noqa: E402

HOTPOT = REPO.parent / "shared" / "data" / "hotpot_dev_distractor_v1_random_500.json"
MAX_LENGTH = 4096


def lognormal_lengths(n: int, seed: int = 0, median: int = 600, sigma: float = 0.8) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(np.round(rng.lognormal(np.log(median), sigma, n)), 32, 4096).astype(np.int64)


def hotpot_lengths() -> dict[str, np.ndarray]:
    """Token lengths of the converted HotpotQA dev sample (empty when the shared file is absent)."""
    if not HOTPOT.exists():
        return {}
    from qa_train.data.hotpot import convert
    from qa_train.data.prompt import render_prompt
    from qa_train.data.records import record_to_messages
    from qa_train.tiny_model import train_tokenizer

    records, _ = convert(json.loads(HOTPOT.read_text()), str(HOTPOT))
    texts = [render_prompt(record_to_messages(r)) for r in records]
    tok = train_tokenizer(texts, vocab_size=4096, model_max_length=1 << 20)
    bpe = np.array([len(x) for x in tok(texts)["input_ids"]], dtype=np.int64)
    words = np.array([len(t.split()) for t in texts], dtype=np.int64)
    return {"hotpot-bpe4096": bpe, "hotpot-words": words}


def chunked_bfd(lengths: np.ndarray, max_length: int, chunk: int = 1000) -> list[list[int]]:
    groups: list[list[int]] = []
    for start in range(0, lengths.size, chunk):
        groups += [
            [start + i for i in g] for g in pack_lengths(lengths[start : start + chunk], max_length, "bfd")
        ]
    return groups


def run_one(name: str, lengths: np.ndarray, strategy: str, repeats: int) -> dict:
    best, best_cpu = float("inf"), float("inf")
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        groups = (
            chunked_bfd(lengths, MAX_LENGTH)
            if strategy == "bfd-chunk1000"
            else pack_lengths(lengths, MAX_LENGTH, strategy)
        )
        best, best_cpu = min(best, time.perf_counter() - t0), min(best_cpu, time.process_time() - c0)
    stats = PackingStats.from_groups(lengths, groups, MAX_LENGTH, strategy)
    return {
        "dataset": name,
        "median_len": float(np.median(lengths)),
        "mean_len": float(lengths.mean()),
        **stats.as_dict(),
        "seconds": best,
        "cpu_seconds": best_cpu,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "packing.json")
    p.add_argument("--repeats", type=int, default=3, help="timing = best of N")
    args = p.parse_args(argv)

    datasets = {
        "lognormal-25547": lognormal_lengths(25_547),
        "lognormal-1M": lognormal_lengths(1_000_000, seed=1),
    }
    for name, arr in hotpot_lengths().items():
        if arr.max() > MAX_LENGTH:
            print(
                f"note: {name}: {(arr > MAX_LENGTH).sum()} samples > {MAX_LENGTH} dropped (training truncates them)"
            )
            arr = arr[arr <= MAX_LENGTH]
        datasets[name] = arr
        datasets[name + "-x50"] = np.tile(arr, 50)

    rows = []
    for name, arr in datasets.items():
        strategies = ["bfd", "ffd", "next_fit"] + (["bfd-chunk1000"] if not name.endswith("1M") else [])
        for strategy in strategies:
            rows.append(run_one(name, arr, strategy, args.repeats if name.endswith("1M") else 1))

    header = f"{'dataset':<22}{'strategy':<15}{'samples':>9}{'packs':>9}{'lower':>9}{'+%LB':>8}{'eff %':>8}{'sec':>8}{'cpu s':>8}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['dataset']:<22}{r['strategy']:<15}{r['samples']:>9}{r['packs']:>9}{r['lower_bound']:>9}"
            f"{100 * r['excess_over_lower_bound']:>8.3f}{100 * r['efficiency']:>8.2f}{r['seconds']:>8.3f}{r['cpu_seconds']:>8.3f}"
        )

    def pick(ds: str, st: str) -> dict:
        return next(r for r in rows if r["dataset"] == ds and r["strategy"] == st)

    main_row, big = pick("lognormal-25547", "bfd"), pick("lognormal-1M", "bfd")
    targets = {
        "bfd_efficiency_ge_99pct": main_row["efficiency"] >= 0.99,
        "bfd_excess_le_0.2pct": main_row["excess_over_lower_bound"] <= 0.002,
        # the machine is shared: CPU time is the stable measure, wall time is reported next to it
        "bfd_1M_seconds_le_2": big["cpu_seconds"] <= 2.0,
        "bfd_1M_wall_seconds": big["seconds"],
        "bfd_vs_next_fit_packs_ratio": main_row["packs"] / pick("lognormal-25547", "next_fit")["packs"],
    }
    print("targets:", json.dumps(targets))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "max_length": MAX_LENGTH,
        "machine": platform.processor() or platform.machine(),
        "load_average": os.getloadavg(),
        "rows": rows,
        "targets": targets,
    }
    args.json.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.json}")
    ok = (
        targets["bfd_efficiency_ge_99pct"]
        and targets["bfd_excess_le_0.2pct"]
        and targets["bfd_1M_seconds_le_2"]
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
