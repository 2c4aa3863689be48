"""Assert, from the host, what the container smoke job must have left in the object store.

Why a separate checker: the container's own success message proves nothing about what a user can later
download. This reads the bucket with plain boto3 (not the project's sync code, so a sync bug cannot hide
itself) and checks every committed folder against its ``_manifest.json``: each listed file exists with the
listed size.

Usage: python scripts/check_smoke_store.py s3://qa-smoke/runs/smoke --expect_questions 8
Credentials and endpoint: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_ENDPOINT_URL.
Prints a JSON report; exit 0 when everything is there, 1 naming each missing piece.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import Any

MANIFEST = "_manifest.json"


def client() -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=os.environ.get("AWS_ENDPOINT_URL"),
        region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3}),
    )


def list_sizes(s3: Any, bucket: str, prefix: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        out.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})
    return out


def check_folder(s3: Any, bucket: str, folder: str, keys: dict[str, int]) -> list[str]:
    """Problems with one committed folder (``folder`` ends with '/'); empty list = complete."""
    mkey = folder + MANIFEST
    if mkey not in keys:
        return [f"s3://{bucket}/{folder}: no {MANIFEST} (not committed)"]
    manifest = json.loads(s3.get_object(Bucket=bucket, Key=mkey)["Body"].read())
    files = manifest.get("files")
    if not isinstance(files, list) or not files:
        return [f"s3://{bucket}/{mkey}: manifest lists no files"]
    problems = []
    for entry in files:
        key = folder + entry["path"]
        if key not in keys:
            problems.append(f"s3://{bucket}/{key}: listed in the manifest but missing")
        elif keys[key] != entry["size"]:
            problems.append(f"s3://{bucket}/{key}: size {keys[key]} != manifest {entry['size']}")
    return problems


def check_run(uri: str, expect_questions: int) -> dict[str, Any]:
    m = re.match(r"^s3://([^/]+)/(.+?)/?$", uri)
    if not m:
        raise SystemExit(f"error: {uri!r} is not s3://bucket/prefix/run")
    bucket, run = m.group(1), m.group(2) + "/"
    s3 = client()
    keys = list_sizes(s3, bucket, run)
    problems: list[str] = []
    report: dict[str, Any] = {"run": uri, "objects": len(keys)}

    ckpts = sorted(
        {k[len(run) :].split("/")[0] for k in keys if re.match(re.escape(run) + r"checkpoint-\d+/", k)}
    )
    committed = [c for c in ckpts if run + c + "/" + MANIFEST in keys]
    report["checkpoints"], report["committed_checkpoints"] = ckpts, committed
    if not committed:
        problems.append(f"{uri}: no committed checkpoint-<step>/{MANIFEST} (found {ckpts or 'none'})")
    for c in committed:
        problems += check_folder(s3, bucket, f"{run}{c}/", keys)

    merged = run + "merged/"
    problems += check_folder(s3, bucket, merged, keys)
    names = [k[len(merged) :] for k in keys if k.startswith(merged)]
    if not any(n.endswith(".safetensors") or n.endswith(".bin") for n in names) or "config.json" not in names:
        problems.append(f"{uri}/merged: no config.json + weights (found {sorted(names)})")
    report["merged_files"] = sorted(names)

    eval_prefix = run + "eval/"
    summaries = [k for k in keys if k.startswith(eval_prefix) and k.endswith("summary.json")]
    report["eval_summaries"] = summaries
    if not summaries:
        problems.append(f"{uri}/eval: no *summary.json")
    for key in summaries:
        summary = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        report["eval_summary"] = summary
        n = summary.get("num_questions")
        if n != expect_questions:
            problems.append(f"s3://{bucket}/{key}: num_questions={n!r}, expected {expect_questions}")
    report["problems"] = problems
    report["ok"] = not problems
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("uri", help="s3://bucket/prefix/<run_name>")
    p.add_argument("--expect_questions", type=int, default=8)
    a = p.parse_args(argv)
    report = check_run(a.uri, a.expect_questions)
    print(json.dumps(report, indent=2))
    for problem in report["problems"]:
        print(f"error: {problem}", file=sys.stderr)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
