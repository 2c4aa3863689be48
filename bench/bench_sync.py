"""Checkpoint upload speed and training interference, against a local SeaweedFS S3 server.

1. Upload a checkpoint-like folder (mixed file sizes, ~1 GB by default) two ways, interleaved in the same run:
   - baseline: one ``put_object`` per file, sequential, single stream;
   - ours: ``qa_train.sync.transfer.push_directory`` (parallel multipart + sha256 manifest, committed last).
2. Training-step slowdown: median step time of a small torch model trained in this process, alone vs while
   the background uploader pushes the same folder over and over.

    python bench/bench_sync.py [--size_mb 1024] [--rounds 2] [--json bench/results/sync.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from qa_train.sync.storage import S3Location, make_client  # noqa: E402
from qa_train.sync.transfer import push_directory  # noqa: E402
from tests.fixtures_s3 import start_seaweedfs  # noqa: E402

# Share of the total per file: a model shard or two, optimizer state, and a tail of small files.
LAYOUT = [("model-00001-of-00002.safetensors", 0.30), ("model-00002-of-00002.safetensors", 0.20),
          ("optimizer.pt", 0.40), ("scheduler.pt", 0.02), ("rng_state.pth", 0.01)]  # fmt: skip
SMALL_FILES = 40  # tokenizer, configs, trainer_state …


def make_checkpoint(root: Path, size_mb: int) -> int:
    root.mkdir(parents=True, exist_ok=True)
    total = size_mb * 1024 * 1024
    for name, share in LAYOUT:
        (root / name).write_bytes(os.urandom(int(total * share)))
    rest = total - sum(int(total * s) for _, s in LAYOUT)
    for i in range(SMALL_FILES):
        (root / f"small/file-{i:02d}.json").parent.mkdir(exist_ok=True)
        (root / f"small/file-{i:02d}.json").write_bytes(os.urandom(rest // SMALL_FILES))
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def sequential_put(client, loc: S3Location, root: Path) -> None:
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        with open(path, "rb") as fh:
            client.put_object(Bucket=loc.bucket, Key=loc.key(path.relative_to(root).as_posix()), Body=fh)


def wipe(client, loc: S3Location) -> None:
    from qa_train.sync.remote import delete_folder

    delete_folder(client, loc)


def bench_upload(client, bucket: str, root: Path, nbytes: int, rounds: int) -> dict:
    times: dict[str, list[float]] = {"sequential_put_object": [], "qa_train_sync": []}
    for r in range(rounds):
        for name in times:  # interleaved, so drift in machine load hits both alike
            loc = S3Location(bucket, f"{name}/round-{r}")
            start = time.perf_counter()
            if name == "sequential_put_object":
                sequential_put(client, loc, root)
            else:
                push_directory(client, root, loc, progress=False)
            times[name].append(time.perf_counter() - start)
            wipe(client, loc)
            print(
                f"  round {r} {name}: {times[name][-1]:.2f}s ({nbytes / 1e6 / times[name][-1]:.1f} MB/s)",
                flush=True,
            )
    out = {k: {"seconds": v, "best_s": min(v), "MB_per_s": nbytes / 1e6 / min(v)} for k, v in times.items()}
    out["speedup"] = out["sequential_put_object"]["best_s"] / out["qa_train_sync"]["best_s"]
    return out


def bench_training(client, bucket: str, root: Path, steps: int) -> dict:
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(512, 512) for _ in range(8)])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(64, 512)

    def step_times(n: int) -> list[float]:
        out = []
        for _ in range(n):
            t = time.perf_counter()
            loss = model(x).pow(2).mean()
            loss.backward()
            opt.step()
            opt.zero_grad()
            out.append(time.perf_counter() - t)
        return out

    step_times(10)  # warm-up
    from qa_train.sync.callback import BackgroundUploader

    phases: dict[str, list[float]] = {"alone": [], "with_sync": []}
    uploaded = 0
    for r in range(2):
        phases["alone"] += step_times(steps)
        uploader = BackgroundUploader(S3Location(bucket, f"train-bg/{r}"), keep=1)
        stop = threading.Event()

        def feed(uploader: BackgroundUploader = uploader, stop: threading.Event = stop) -> None:
            i = 0
            while not stop.is_set():
                uploader.submit(f"checkpoint-{i}", root)
                uploader.wait()
                i += 1

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        time.sleep(0.5)  # let the upload get going
        phases["with_sync"] += step_times(steps)
        stop.set()
        feeder.join()
        uploaded += len(uploader.committed)
        uploader.close()
    alone, synced = statistics.median(phases["alone"]), statistics.median(phases["with_sync"])
    return {
        "median_step_s_alone": alone,
        "median_step_s_with_sync": synced,
        "slowdown_pct": 100 * (synced / alone - 1),
        "steps_per_phase": steps,
        "uploads_completed_during_training": uploaded,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size_mb", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--train_steps", type=int, default=60)
    ap.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "sync.json")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-sync-"))
    server = None
    try:
        server = start_seaweedfs(work / "weed", volume_size_mb=1024)
        for k, v in server.env().items():
            os.environ[k] = v
        client = make_client()
        bucket = "bench-sync"
        client.create_bucket(Bucket=bucket)
        nbytes = make_checkpoint(work / "checkpoint", args.size_mb)
        print(
            f"checkpoint folder: {nbytes / 1e6:.0f} MB, {len(list((work / 'checkpoint').rglob('*')))} entries"
        )
        upload = bench_upload(client, bucket, work / "checkpoint", nbytes, args.rounds)
        print(f"upload: ours {upload['qa_train_sync']['MB_per_s']:.1f} MB/s vs sequential "
              f"{upload['sequential_put_object']['MB_per_s']:.1f} MB/s → {upload['speedup']:.2f}×")  # fmt: skip
        training = bench_training(client, bucket, work / "checkpoint", args.train_steps)
        print(f"training step: {training['median_step_s_alone'] * 1e3:.1f} ms alone, "
              f"{training['median_step_s_with_sync'] * 1e3:.1f} ms with sync → {training['slowdown_pct']:+.1f}%")  # fmt: skip
        result = {
            "size_mb": args.size_mb,
            "bytes": nbytes,
            "cpus": os.cpu_count(),
            "loadavg_start": os.getloadavg(),
            "upload": upload,
            "training": training,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
        print(json.dumps({"speedup": upload["speedup"], "slowdown_pct": training["slowdown_pct"]}))
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
