"""``python launch/submit.py --gpu a100 --dry_run`` end to end (fresh interpreter each time). Target < 1 s.

Side by side in the same run: a bare ``python -c pass`` (interpreter floor) and ``python -c 'import torch'``
(what the launcher would cost if it imported the training stack). Writes bench/results/dry_run.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def timed(cmd: list[str], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)
        out.append(time.perf_counter() - t0)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("-n", type=int, default=10)
    a = p.parse_args()
    py = sys.executable
    cases = {
        "python -c pass": [py, "-c", "pass"],
        "submit --gpu a100 --dry_run (full)": [py, "launch/submit.py", "--gpu", "a100", "--dry_run"],
        "submit --gpu a6000 --job lora --dry_run": [
            py,
            "launch/submit.py",
            "--gpu",
            "a6000",
            "--job",
            "jobs/mistral-qa-lora.yaml",
            "--dry_run",
        ],
        "submit --gpu cpu --job smoke --dry_run": [
            py,
            "launch/submit.py",
            "--gpu",
            "cpu",
            "--job",
            "jobs/smoke.yaml",
            "--dry_run",
        ],
        "python -c 'import torch'": [py, "-c", "import torch"],
    }
    results = {}
    for name, cmd in cases.items():
        times = timed(cmd, a.n if "torch" not in name else max(3, a.n // 3))
        results[name] = {
            "median_s": round(statistics.median(times), 3),
            "min_s": round(min(times), 3),
            "runs": len(times),
        }
        print(f"{name:<42} median {results[name]['median_s']:.3f} s   min {results[name]['min_s']:.3f} s")
    heavy = subprocess.run(
        [py, "-c", "import sys; sys.argv=['x','--gpu','a100','--dry_run']; import launch.submit as s, io, contextlib;"
         "f=io.StringIO();\nwith contextlib.redirect_stdout(f): s.main(sys.argv[1:])\n"
         "print(sorted(m for m in ('torch','transformers','docker','requests') if m in sys.modules))"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    print(f"heavy modules imported by a dry run: {heavy}")
    dry = results["submit --gpu a100 --dry_run (full)"]["median_s"]
    summary = {
        "results": results,
        "dry_run_median_s": dry,
        "target_s": 1.0,
        "meets_target": dry < 1.0,
        "ratio_vs_bare_python": round(dry / results["python -c pass"]["median_s"], 2),
        "ratio_vs_import_torch": round(dry / results["python -c 'import torch'"]["median_s"], 3),
        "heavy_modules_imported": heavy,
    }
    print(json.dumps(summary))
    out = REPO / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "dry_run.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
