"""Checkpoint upload speed and training interference, against a local SeaweedFS S3 server.

1. Upload a checkpoint-like folder (mixed file sizes, ~1 GB by default) two ways, interleaved in the same run:
   - baseline: one ``put_object`` per file, sequential, single stream;
   - ours: ``qa_train.sync.transfer.push_directory`` (parallel multipart + sha256 manifest, committed last).
2. Training-step slowdown: median step time of a small torch model trained in this process, alone vs while
   the background uploader (the same worker process training uses) pushes the same folder over and over.

``--stream_mbps N`` routes S3 traffic through a loopback proxy that caps every TCP connection at N MB/s, a
stand-in for a real network path where one stream is bounded by RTT/window, not by the disk or the CPU.
``--server_nice 19`` lowers the SeaweedFS server's CPU priority: it stands in for remote storage, which costs
the training machine no CPU at all.

    python bench/bench_sync.py [--size_mb 1024] [--rounds 2] [--stream_mbps 0] [--server_nice 0]
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

from qa_train.storage import S3Location, make_client  # noqa: E402
from qa_train.sync.transfer import push_directory  # noqa: E402
from tests.fixtures_s3 import start_seaweedfs  # noqa: E402

# Share of the total per file: a model shard or two, optimizer state, and a tail of small files.
LAYOUT = [("model-00001-of-00002.safetensors", 0.30), ("model-00002-of-00002.safetensors", 0.20),
          ("optimizer.pt", 0.40), ("scheduler.pt", 0.02), ("rng_state.pth", 0.01)]  # fmt: skip
SMALL_FILES = 40  # tokenizer, configs, trainer_state …


class ThrottledProxy:
    """127.0.0.1:<port> → target, each connection (each direction) capped at ``mbps`` MB/s."""

    def __init__(self, target: tuple[str, int], mbps: float) -> None:
        import socket

        self.target, self.rate = target, mbps * 1e6
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.endpoint_url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket

        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            up = socket.create_connection(self.target)
            for a, b in ((conn, up), (up, conn)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src, dst) -> None:
        start, sent = time.monotonic(), 0
        try:
            while data := src.recv(256 * 1024):
                dst.sendall(data)
                sent += len(data)
                ahead = sent / self.rate - (time.monotonic() - start)
                if ahead > 0:
                    time.sleep(ahead)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass


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


def bench_training(
    client, bucket: str, root: Path, steps: int, threads: int, rounds: int, worker_mbps: float = 0
) -> dict:
    import torch

    if threads:
        torch.set_num_threads(threads)
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

    def with_background(run: S3Location, mode: str) -> tuple[list[float], int]:
        """Step times while ``root`` is pushed over and over: by the worker process training uses, or (for
        comparison) by push_directory in a thread of this process, sharing its GIL."""
        from qa_train.sync.callback import BackgroundUploader

        stop, done = threading.Event(), [0]
        uploader = BackgroundUploader(run, keep=1, max_mbps=worker_mbps) if mode == "process" else None

        def feed() -> None:
            while not stop.is_set():
                name = f"checkpoint-{done[0]}"
                if uploader is not None:
                    uploader.submit(name, root)
                    uploader.wait()
                else:
                    push_directory(client, root, run.child(name), progress=False)
                done[0] += 1

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        time.sleep(0.5)  # let the upload get going
        times = step_times(steps)
        stop.set()
        feeder.join()
        if uploader is not None:
            uploader.close()
        wipe(client, run)
        return times, done[0]

    modes = ("alone", "process", "thread")
    phases: dict[str, list[float]] = {m: [] for m in modes}
    per_round: list[dict[str, float]] = []
    uploaded = 0
    for r in range(rounds):  # alternate the phases, so drifting machine load hits all alike
        row = {}
        for mode in modes:
            if mode == "alone":
                times = step_times(steps)
            else:
                times, n = with_background(S3Location(bucket, f"train-bg/{mode}-{r}"), mode)
                uploaded += n
            phases[mode] += times
            row[f"{mode}_ms"] = 1e3 * statistics.median(times)
        per_round.append(row)
    alone = statistics.median(phases["alone"])
    synced = statistics.median(phases["process"])
    threaded = statistics.median(phases["thread"])
    return {
        "median_step_s_alone": alone,
        "median_step_s_with_sync": synced,
        "median_step_s_with_thread_sync": threaded,
        "slowdown_pct": 100 * (synced / alone - 1),
        "slowdown_pct_thread_variant": 100 * (threaded / alone - 1),
        "steps_per_phase": steps,
        "torch_threads": torch.get_num_threads(),
        "worker_max_mbps": worker_mbps,
        "uploads_completed_during_training": uploaded,
        "per_round": per_round,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size_mb", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--train_steps", type=int, default=60)
    ap.add_argument("--train_rounds", type=int, default=4, help="alternations of alone / with-sync phases")
    ap.add_argument("--torch_threads", type=int, default=0, help="0: torch's default")
    ap.add_argument(
        "--stream_mbps", type=float, default=0, help="cap each TCP stream at N MB/s (0: no proxy)"
    )
    ap.add_argument("--server_nice", type=int, default=0, help="niceness of the SeaweedFS server process")
    ap.add_argument("--skip_training", action="store_true")
    ap.add_argument(
        "--worker_max_mbps", type=float, default=0, help="--sync_max_mbps of the background worker"
    )
    ap.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "sync.json")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-sync-"))
    server = None
    try:
        server = start_seaweedfs(work / "weed", volume_size_mb=1024)
        if args.server_nice:
            os.setpriority(os.PRIO_PROCESS, server.proc.pid, args.server_nice)
        endpoint = server.endpoint_url
        if args.stream_mbps:
            host, port = endpoint.removeprefix("http://").split(":")
            endpoint = ThrottledProxy((host, int(port)), args.stream_mbps).endpoint_url
        for k, v in server.env(endpoint).items():
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
        training = {}
        if not args.skip_training:
            training = bench_training(
                client,
                bucket,
                work / "checkpoint",
                args.train_steps,
                args.torch_threads,
                args.train_rounds,
                args.worker_max_mbps,
            )
            print(f"training step: {training['median_step_s_alone'] * 1e3:.1f} ms alone, "
                  f"{training['median_step_s_with_sync'] * 1e3:.1f} ms with sync → {training['slowdown_pct']:+.1f}% "
                  f"(in-process thread instead: {training['slowdown_pct_thread_variant']:+.1f}%)")  # fmt: skip
        result = {
            "command": " ".join(sys.argv),
            "size_mb": args.size_mb,
            "stream_mbps": args.stream_mbps,
            "server_nice": args.server_nice,
            "bytes": nbytes,
            "cpus": os.cpu_count(),
            "loadavg_start": os.getloadavg(),
            "upload": upload,
            "training": training,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
        print(json.dumps({"speedup": upload["speedup"], "slowdown_pct": training.get("slowdown_pct")}))
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
