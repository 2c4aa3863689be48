"""qa_train/storage is the only code that talks to S3 (issue 21 item 2): no other module of the container or the
launcher imports boto3, botocore or s3transfer, lazily or not (a test double or a test may)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
S3_LIBRARIES = {"boto3", "botocore", "s3transfer"}
ADAPTER = REPO / "qa_train" / "storage"


def s3_imports(path: Path, root: Path = REPO) -> list[str]:
    """``file:line module`` for each import of an S3 library in ``path`` (function-level ones too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names = [node.module or ""]
        else:
            continue
        found += [
            f"{path.relative_to(root)}:{node.lineno} {n}" for n in names if n.split(".")[0] in S3_LIBRARIES
        ]
    return found


def test_only_the_storage_adapter_imports_s3_libraries():
    files = [p for d in ("qa_train", "launch") for p in (REPO / d).rglob("*.py") if ADAPTER not in p.parents]
    assert len(files) > 50
    bad = [hit for f in files for hit in s3_imports(f)]
    assert not bad, f"talk to S3 through qa_train.storage, not directly: {bad}"
    assert s3_imports(ADAPTER / "client.py"), "the adapter itself is where boto3 is imported"


def test_the_check_finds_a_lazy_import(tmp_path):
    f = tmp_path / "x.py"
    f.write_text(
        "import json\ndef f():\n    from botocore.exceptions import ClientError\n    import boto3.session\n"
    )
    assert s3_imports(f, tmp_path) == ["x.py:3 botocore.exceptions", "x.py:4 boto3.session"]


def test_clients_share_one_parsed_service_model_and_keep_their_own_credentials():
    """A client per call is cheap: every session reads S3's model through one loader (parsed once), and the
    loader's search path does not grow with each session; credentials stay per client."""
    from qa_train.storage.client import _data_loader, make_client

    a = make_client(
        "http://127.0.0.1:9", credentials={"AWS_ACCESS_KEY_ID": "a-id", "AWS_SECRET_ACCESS_KEY": "a-s"}
    )
    b = make_client(
        "http://127.0.0.1:9", credentials={"AWS_ACCESS_KEY_ID": "b-id", "AWS_SECRET_ACCESS_KEY": "b-s"}
    )
    paths = list(_data_loader().search_paths)
    make_client("http://127.0.0.1:9")
    assert _data_loader().search_paths == paths and len(set(paths)) == len(paths)
    assert a.meta.service_model._service_description is b.meta.service_model._service_description
    assert a._request_signer._credentials.access_key == "a-id"
    assert b._request_signer._credentials.access_key == "b-id"
