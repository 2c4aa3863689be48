"""Time from ``python -m qa_train train`` start to its first training step: cold start vs relaunches with and
without the run's tokenized-data cache in object storage (issue 13 item 5).

Scenarios, interleaved in each repetition (order rotated) against a local SeaweedFS S3 server:
  (a) cold       a new run: empty local cache, nothing remote → tokenize, upload ``tokenized/<key>/``, step 1;
  (b) relaunch   a fresh machine resuming a run (fresh output dir, empty local cache, checkpoint-1 downloaded)
                 whose ``tokenized/<key>/`` is committed → download + verify instead of tokenizing;
  (c) relaunch   the same, with the run's ``tokenized/`` deleted first → tokenize (and upload again).
Each train process is killed as soon as its first step's loss is logged. Also reported: the data phase alone
(the seconds in train's "train data … (origin, N s)" log line).

Data: the 500-question HotpotQA dev sample converted with ``convert-hotpot`` (read from ../shared/data, never
copied into the repo); model: ``make-tiny-model`` (tokenizer trained on that conversion).

    nice -n 10 python bench/bench_resume.py [--reps 3] [--max_length 4096] [--replicate 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.fixtures_s3 import start_seaweedfs  # noqa: E402

HOTPOT = REPO.parent / "shared" / "data" / "hotpot_dev_distractor_v1_random_500.json"
STEP_RE = re.compile(r"['\"]loss['\"]\s*:")
DATA_RE = re.compile(r"train data \S+ \((local cache|remote cache|tokenized), ([0-9.]+)s\)")


def run_until_first_step(cmd: list[str], env: dict[str, str], timeout: float = 600) -> dict[str, object]:
    """Start ``cmd``; seconds until its first logged loss, the data phase; then kill its group."""
    start = time.monotonic()
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True, bufsize=1,
    )  # fmt: skip
    timer = threading.Timer(timeout, lambda: os.killpg(proc.pid, signal.SIGKILL))
    timer.start()
    first_step, data, lines = None, None, []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if data is None and (m := DATA_RE.search(line)):
            data = (m.group(1), float(m.group(2)))
        if STEP_RE.search(line):
            first_step = time.monotonic() - start
            break
    timer.cancel()
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    if first_step is None:
        raise RuntimeError("no training step logged:\n" + "".join(lines[-40:]))
    return {
        "first_step_s": first_step,
        "origin": data[0] if data else None,
        "data_s": data[1] if data else None,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--max_length", type=int, default=4096)
    ap.add_argument(
        "--replicate", type=int, default=1, help="repeat the converted records N times (size proxy)"
    )
    ap.add_argument("--json", type=Path)
    ap.add_argument("--keep", action="store_true", help="keep the temp folder")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench_resume-"))
    server = start_seaweedfs(root / "s3")
    try:
        return _bench(args, root, server)
    finally:
        server.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


def _bench(args: argparse.Namespace, root: Path, server) -> int:
    py = [sys.executable, "-m", "qa_train"]
    data = root / "hotpot500.json"
    subprocess.run([*py, "convert-hotpot", str(HOTPOT), str(data)], cwd=REPO, check=True, capture_output=True)
    if args.replicate > 1:
        data.write_text(json.dumps(json.loads(data.read_text()) * args.replicate))
    model = root / "tiny"
    subprocess.run([*py, "make-tiny-model", str(model), "--data", str(data)], cwd=REPO, check=True,
                   capture_output=True)  # fmt: skip
    bucket = "bench-" + uuid.uuid4().hex[:8]
    client = server.client()
    client.create_bucket(Bucket=bucket)
    env = {**os.environ, **server.env(), "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    sync_to = f"s3://{bucket}/runs"

    def cmd(run: str, out: Path, cache: Path, *extra: str) -> list[str]:
        return [
            *py, "train", "--model_name_or_path", str(model), "--train_path", str(data), "--output_dir", str(out),
            "--data_cache_dir", str(cache), "--model_max_length", str(args.max_length), "--packing", "True",
            "--per_device_train_batch_size", "1", "--logging_steps", "1", "--report_to", "none",
            "--use_cpu", "True", "--disable_tqdm", "True", "--seed", "42", "--sync_to", sync_to, "--run_name", run,
            *extra,
        ]  # fmt: skip

    # The run a relaunch resumes: checkpoint-1 and tokenized/<key>/ committed.
    prep = subprocess.run(
        cmd("relaunch", root / "prep", root / "cache-prep", "--max_steps", "1", "--save_steps", "1"),
        cwd=REPO, env=env, capture_output=True, text=True,
    )  # fmt: skip
    if prep.returncode != 0:
        raise RuntimeError(prep.stdout[-3000:] + prep.stderr[-3000:])
    relaunch_args = ("--max_steps", "3", "--save_strategy", "no")

    def delete_remote_tokenized() -> None:
        keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="runs/relaunch/tokenized/").get(
            "Contents", [])]  # fmt: skip
        if keys:
            client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys]})

    def has_remote_tokenized() -> bool:
        listed = client.list_objects_v2(Bucket=bucket, Prefix="runs/relaunch/tokenized/").get("Contents", [])
        return any(o["Key"].endswith("/_manifest.json") for o in listed)

    scenarios = {
        "a_cold": lambda i: cmd(
            f"cold-{i}", root / f"a{i}", root / f"cache-a{i}", "--max_steps", "3", "--save_strategy", "no"
        ),  # fmt: skip
        "b_relaunch_remote_cache": lambda i: cmd(
            "relaunch", root / f"b{i}", root / f"cache-b{i}", *relaunch_args
        ),
        "c_relaunch_no_cache": lambda i: cmd(
            "relaunch", root / f"c{i}", root / f"cache-c{i}", *relaunch_args
        ),
    }
    names = list(scenarios)
    results: dict[str, list[dict[str, object]]] = {n: [] for n in names}
    for i in range(args.reps):
        order = names[i % len(names) :] + names[: i % len(names)]
        for name in order:
            if name == "c_relaunch_no_cache":
                delete_remote_tokenized()
            elif name == "b_relaunch_remote_cache":
                assert has_remote_tokenized(), "the run's tokenized cache should be committed"
            r = run_until_first_step(scenarios[name](i), env)
            results[name].append(r)
            print(f"rep {i} {name}: first step at {r['first_step_s']:.2f}s, data {r['origin']} {r['data_s']}s",
                  flush=True)  # fmt: skip

    summary = {}
    for name in names:
        firsts = [float(r["first_step_s"]) for r in results[name]]
        datas = [float(r["data_s"]) for r in results[name] if r["data_s"] is not None]
        summary[name] = {
            "first_step_median_s": statistics.median(firsts), "first_step_min_s": min(firsts),
            "first_step_max_s": max(firsts), "data_median_s": statistics.median(datas) if datas else None,
            "data_min_s": min(datas) if datas else None, "data_max_s": max(datas) if datas else None,
            "origins": sorted({str(r["origin"]) for r in results[name]}),
        }  # fmt: skip
    records = len(json.loads(data.read_text()))
    print(f"\n{records} records (converted x{args.replicate}), max_length {args.max_length}, ", end="")
    print(f"{args.reps} interleaved reps, {os.cpu_count()} CPUs")
    print(
        f"{'scenario':<26} {'first step (median, min–max)':>30} {'data phase (median, min–max)':>32}  origin"
    )
    for name, s in summary.items():
        first = f"{s['first_step_median_s']:.2f}s ({s['first_step_min_s']:.2f}–{s['first_step_max_s']:.2f})"
        dat = f"{s['data_median_s']:.2f}s ({s['data_min_s']:.2f}–{s['data_max_s']:.2f})"
        print(f"{name:<26} {first:>30} {dat:>32}  {','.join(s['origins'])}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"summary": summary, "runs": results, "records": records}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
