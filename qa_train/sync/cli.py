"""``python -m qa_train sync ls|push|pull``: inspect and move checkpoints by hand (same code as training uses)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path

from qa_train.logs import setup_logging
from qa_train.storage import (
    CredentialValueError,
    S3Location,
    StorageError,
    check_access,
    head,
    make_client,
    scrub,
)

from .manifest import MANIFEST_NAME, ManifestError

logger = logging.getLogger("qa_train.sync")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m qa_train sync",
        description="Credentials come from the standard AWS chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, "
        "shared files, instance roles); the endpoint from --endpoint_url or AWS_ENDPOINT_URL.",
    )
    p.add_argument("--endpoint_url", default=None, help="S3 endpoint (default: AWS_ENDPOINT_URL)")
    sub = p.add_subparsers(dest="cmd", required=True)
    ls = sub.add_parser("ls", help="list a run's folders: checkpoints with step, size, committed or not")
    ls.add_argument("uri", help="s3://bucket/prefix/<run_name>")
    ls.add_argument("--json", action="store_true", help="print JSON instead of a table")
    push = sub.add_parser("push", help="upload a local folder and commit it with _manifest.json")
    push.add_argument("local_dir", type=Path)
    push.add_argument("uri", help="destination, e.g. s3://bucket/prefix/<run_name>/checkpoint-<step>")
    pull = sub.add_parser("pull", help="download a committed folder and verify sizes + sha256")
    pull.add_argument("uri", help="a committed folder, or a run (then its newest committed checkpoint)")
    pull.add_argument("dest", type=Path, help="local folder to create (must not exist or be empty)")
    for sp in (push, pull):
        sp.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    return p


def _ls(client: object, loc: S3Location, as_json: bool) -> int:
    from .remote import list_run

    folders = list_run(client, loc)
    if as_json:
        print(json.dumps([{**asdict(f), "step": f.step} for f in folders], indent=2))
        return 0
    if not folders:
        print(f"(nothing under {loc.uri})")
        return 0
    print(f"{'NAME':<22} {'STEP':>8} {'SIZE':>12} {'FILES':>6}  STATE")
    for f in folders:
        state = "committed" if f.committed else f"INCOMPLETE: {f.problem}"
        step = "" if f.step is None else str(f.step)
        print(f"{f.name:<22} {step:>8} {f.total_bytes / 1e6:>10.1f}MB {f.num_files:>6}  {state}")
    return 0


def _pull(client: object, loc: S3Location, dest: Path, progress: bool, endpoint_url: str | None) -> int:
    from .remote import newest_committed
    from .transfer import pull_directory

    if head(client, loc.bucket, loc.key(MANIFEST_NAME)) is None:
        newest = newest_committed(client, loc)
        if newest is None:
            raise StorageError(
                f"{loc.uri} is neither a committed folder nor a run with a committed checkpoint"
            )
        logger.info("Pulling newest committed checkpoint %s", newest.uri)
        loc = S3Location.parse(newest.uri)
    manifest = pull_directory(client, loc, dest, progress=progress, endpoint_url=endpoint_url)
    summary = {
        "pulled": loc.uri,
        "to": str(dest),
        "files": len(manifest.files),
        "bytes": manifest.total_bytes,
    }
    print(json.dumps(summary))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    setup_logging(datefmt=None)
    try:
        loc = S3Location.parse(args.uri)
        client = make_client(args.endpoint_url)
        check_access(client, S3Location(loc.bucket), args.endpoint_url)
        if args.cmd == "ls":
            return _ls(client, loc, args.json)
        if args.cmd == "push":
            from .transfer import push_directory

            manifest = push_directory(
                client, args.local_dir, loc, progress=not args.no_progress, endpoint_url=args.endpoint_url
            )
            print(json.dumps({"pushed": str(args.local_dir), "to": loc.uri, "files": len(manifest.files),
                              "bytes": manifest.total_bytes}))  # fmt: skip
            return 0
        return _pull(client, loc, args.dest, not args.no_progress, args.endpoint_url)
    except CredentialValueError as exc:  # bad input: names the variable, never prints its value
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (StorageError, ManifestError) as exc:
        print(f"error: {scrub(str(exc))}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
