"""``upload-data``: a local folder or file to object storage (``qa_train/storage/upload.py``), printing the
``data:`` lines a job spec needs."""

from __future__ import annotations

import sys

from launch.cli import args as cli_args
from launch.cli.common import CliError, Commands
from launch.credentials import CONTAINER_SECRETS, load_secrets

SPEC_FIELDS = {"train": "train_path", "valid": "validation_path", "hotpot": "hotpot_qa_dev_path"}


class DataCommands(Commands):
    def upload_data(self, local_dir: str, uri: str) -> None:
        """Upload LOCAL_DIR (or one file) to URI (s3://bucket/prefix), skipping files already there unchanged;
        prints the s3:// URIs to put under ``data:`` in a job spec. Credentials AWS_* (env or *_FILE), endpoint
        AWS_ENDPOINT_URL."""
        from qa_train.storage import describe_error, upload_dir

        creds = {k: v for k, v in load_secrets(CONTAINER_SECRETS).items() if k.startswith("AWS_")}
        try:
            files = upload_dir(str(local_dir), str(uri), creds or None, progress=sys.stderr.isatty())
        except (OSError, ValueError) as e:
            raise cli_args.UsageError(str(e)) from None
        except Exception as e:  # botocore: refused, unreachable, no such bucket
            raise CliError(f"upload to {uri} failed: {describe_error(e, str(uri))}") from None
        hints = []
        for f in files:
            print(f"{'unchanged' if f.skipped else 'uploaded '} {f.uri} ({f.size} bytes)")
            name = f.uri.rsplit("/", 1)[-1].lower()
            field = next((v for k, v in SPEC_FIELDS.items() if k in name), None)
            if field and name.endswith((".json", ".jsonl")):
                hints.append(f"  {field}: {f.uri}")
        if hints:
            print("in a job spec:\ndata:\n" + "\n".join(hints))
