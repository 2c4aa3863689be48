"""The tokenized-data cache in object storage (issue 13 item 5): a relaunch on a fresh machine downloads
``<run>/tokenized/<key>/`` instead of re-tokenizing; a bad remote copy is ignored with a warning and rebuilt.

Real SeaweedFS, a real tiny tokenizer, real ``train`` subprocesses; nothing mocked.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from qa_train.contract import RunLayout
from qa_train.data.tokenize import cache_identity, cache_key, load_tokenized
from qa_train.storage import RunStore, S3Location
from qa_train.sync.remote import apply_retention, list_run
from qa_train.sync.tokenized import DATA_NAME, KEY_NAME, RemoteTokenCache
from qa_train.sync.transfer import push_directory
from tests.conftest import REPO, make_records


@pytest.fixture(scope="module")
def tokenizer(tiny_llama):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama)


def _remote(s3, run: str = "runs/job") -> RemoteTokenCache:
    return RemoteTokenCache(s3.client(), S3Location.parse(s3.uri(run)), s3.endpoint_url, progress=False)


def test_key_is_content_addressed_and_follows_every_setting(tmp_path, tokenizer, tiny_llama):
    records = make_records(6, seed=11)
    a, b = tmp_path / "a" / "train.json", tmp_path / "b" / "copy.json"
    for p in (a, b):
        p.parent.mkdir()
        p.write_text(json.dumps(records))
    key = cache_key(str(a), tokenizer, 512, True, False)
    # Another folder, name and mtime (a relaunch on another machine): the same key.
    assert cache_key(str(b), tokenizer, 512, True, False) == key
    assert cache_key(str(a), tokenizer, 256, True, False) != key
    assert cache_key(str(a), tokenizer, 512, False, False) != key
    assert cache_key(str(a), tokenizer, 512, True, True) != key
    b.write_text(json.dumps(records[:-1]))
    assert cache_key(str(b), tokenizer, 512, True, False) != key
    grown = type(tokenizer).from_pretrained(tiny_llama)
    grown.add_tokens(["<|brand-new|>"])
    assert cache_key(str(a), grown, 512, True, False) != key


@pytest.mark.slow  # another Python process importing transformers (~4 s)
def test_the_key_is_the_same_in_another_process(tmp_path, tokenizer, tiny_llama):
    """The tokenizer reloaded in another process fingerprints the same (its serialization is deterministic)."""
    data = tmp_path / "train.json"
    data.write_text(json.dumps(make_records(6, seed=11)))
    code = (
        "import sys; from transformers import AutoTokenizer; from qa_train.data.tokenize import cache_key; "
        "print(cache_key(sys.argv[1], AutoTokenizer.from_pretrained(sys.argv[2]), 512, True, False))"
    )
    other = subprocess.run(
        [sys.executable, "-c", code, str(data), str(tiny_llama)], cwd=REPO, capture_output=True, text=True
    )
    assert other.stdout.strip() == cache_key(str(data), tokenizer, 512, True, False), other.stderr[-2000:]


def test_remote_cache_roundtrip_and_run_listing(s3, tmp_path, tokenizer):
    src = tmp_path / "train.json"
    src.write_text(json.dumps(make_records(8, seed=12)))
    remote = _remote(s3)
    first = load_tokenized(src, tokenizer, 512, tmp_path / "cache1", remote=remote)
    assert first.origin == "built"
    key = cache_key(str(src), tokenizer, 512, True, False)
    keys = s3.keys(f"runs/job/tokenized/{key}/")
    assert set(keys) == {f"runs/job/tokenized/{key}/{n}" for n in (DATA_NAME, KEY_NAME, "_manifest.json")}
    stored = json.loads(
        s3.client().get_object(Bucket=s3.bucket, Key=f"runs/job/tokenized/{key}/{KEY_NAME}")["Body"].read()
    )
    assert stored == {"key": key, **cache_identity(str(src), tokenizer, 512, True, False)}

    # A fresh machine: empty local cache, the data copied elsewhere → downloaded, not tokenized.
    moved = tmp_path / "elsewhere.json"
    shutil.copy(src, moved)
    second = load_tokenized(moved, tokenizer, 512, tmp_path / "cache2", remote=remote)
    assert second.origin == "remote"
    assert second.input_ids == first.input_ids and second.labels == first.labels
    assert second.stats == first.stats
    assert (tmp_path / "cache2" / f"{key}.npz").is_file()
    # Local hit next time; the remote copy is committed already, so nothing is uploaded again.
    before = s3.client().head_object(Bucket=s3.bucket, Key=f"runs/job/tokenized/{key}/_manifest.json")
    third = load_tokenized(moved, tokenizer, 512, tmp_path / "cache2", remote=remote)
    assert third.origin == "local"
    after = s3.client().head_object(Bucket=s3.bucket, Key=f"runs/job/tokenized/{key}/_manifest.json")
    assert after["ETag"] == before["ETag"] and after["LastModified"] == before["LastModified"]

    # Beside checkpoints: listed as committed tokenized/<key>, never a checkpoint, never deleted by retention.
    run = S3Location.parse(s3.uri("runs/job"))
    client = s3.client()
    for step in (1, 2, 3):
        ckpt = tmp_path / f"checkpoint-{step}"
        ckpt.mkdir()
        (ckpt / "trainer_state.json").write_text("{}")
        push_directory(client, ckpt, run.child(ckpt.name), progress=False)
    deleted = apply_retention(client, run, keep=1)
    assert deleted == ["checkpoint-1", "checkpoint-2"]
    folders = {f.name: f for f in list_run(client, run)}
    assert folders[f"tokenized/{key}"].committed and folders[f"tokenized/{key}"].step is None
    assert set(folders) == {"checkpoint-3", f"tokenized/{key}"}
    store = RunStore(RunLayout(s3.uri("runs/job")))
    assert store.committed_step() == 3
    assert f"tokenized/{key}" in store.committed()
    assert RunLayout(s3.uri("runs/job")).tokenized(key) == folders[f"tokenized/{key}"].uri


@pytest.mark.parametrize("damage", ["corrupt", "partial"])
def test_bad_remote_copy_is_ignored_with_a_warning_and_rebuilt(s3, tmp_path, tokenizer, caplog, damage):
    src = tmp_path / "train.json"
    src.write_text(json.dumps(make_records(8, seed=13)))
    remote = _remote(s3)
    first = load_tokenized(src, tokenizer, 512, tmp_path / "cache1", remote=remote)
    key = cache_key(str(src), tokenizer, 512, True, False)
    prefix = f"runs/job/tokenized/{key}/"
    client = s3.client()
    if damage == "corrupt":  # same size, other bytes: only the sha256 in the manifest can tell
        size = s3.keys(prefix)[prefix + DATA_NAME]
        client.put_object(Bucket=s3.bucket, Key=prefix + DATA_NAME, Body=b"\0" * size)
        assert remote.has(key)  # a listing alone cannot tell: verification on download must
    else:  # an upload that died before its manifest
        client.delete_object(Bucket=s3.bucket, Key=prefix + "_manifest.json")
        assert not remote.has(key)
    with caplog.at_level(logging.WARNING, logger="qa_train.sync"):
        again = load_tokenized(src, tokenizer, 512, tmp_path / "cache2", remote=remote)
    assert again.origin == "built"
    assert again.input_ids == first.input_ids
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("Ignoring the remote tokenized cache" in m and key in m for m in warned), warned
    assert not list((tmp_path / "cache2").glob(".*")), "no download leftovers"
    # Rebuilt and published again: the next fresh machine downloads a good copy.
    assert remote.has(key)
    fresh = load_tokenized(src, tokenizer, 512, tmp_path / "cache3", remote=remote)
    assert fresh.origin == "remote" and fresh.labels == first.labels


def test_unreachable_storage_only_warns(tmp_path, tokenizer, caplog):
    from qa_train.storage import make_client
    from tests.fixtures_s3 import free_ports

    client = make_client(f"http://127.0.0.1:{free_ports(1)[0]}", max_attempts=1)
    remote = RemoteTokenCache(client, S3Location("nowhere", "runs/job"), progress=False)
    src = tmp_path / "train.json"
    src.write_text(json.dumps(make_records(4, seed=14)))
    with caplog.at_level(logging.WARNING, logger="qa_train.sync"):
        data = load_tokenized(src, tokenizer, 512, tmp_path / "cache", remote=remote)
    assert data.origin == "built" and len(data) > 0
    assert any("Could not upload the tokenized cache" in r.getMessage() for r in caplog.records)


# -- the whole path: python -m qa_train train --sync_to … on a fresh output dir and an empty cache dir --


def _train(model: Path, data: Path, out: Path, cache: Path, sync_to: str, env: dict, *extra: str) -> str:
    cmd = [
        sys.executable, "-m", "qa_train", "train", "--model_name_or_path", str(model), "--train_path", str(data),
        "--output_dir", str(out), "--data_cache_dir", str(cache), "--max_steps", "3", "--logging_steps", "1",
        "--per_device_train_batch_size", "2", "--packing", "True", "--model_max_length", "256",
        "--report_to", "none", "--use_cpu", "True", "--seed", "42", "--save_strategy", "no",
        "--disable_tqdm", "True", "--sync_to", sync_to, "--run_name", "job", "--resume", "never", *extra,
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    out_text = proc.stdout + proc.stderr
    assert proc.returncode == 0, out_text[-4000:]
    return out_text


def _losses(out: Path) -> list[float]:
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return [h["loss"] for h in history if "loss" in h]


@pytest.mark.slow
def test_relaunch_downloads_instead_of_tokenizing(s3, tiny_llama, records_file, tmp_path):
    env = {**s3.env, "PYTHONUNBUFFERED": "1"}
    sync_to = s3.uri("runs")
    first = _train(tiny_llama, records_file, tmp_path / "out1", tmp_path / "cache1", sync_to, env)
    s1 = json.loads((tmp_path / "out1" / "train_summary.json").read_text())
    assert s1["tokenized_from"] == "built"
    assert "Uploaded tokenized data to" in first
    run = S3Location.parse(s3.uri("runs/job"))
    tok = [f for f in list_run(s3.client(), run) if f.name.startswith("tokenized/")]
    assert len(tok) == 1 and tok[0].committed
    key = tok[0].name.split("/", 1)[1]

    # A relaunch on a fresh machine: new output dir, empty local cache, the data in another folder.
    data2 = tmp_path / "moved" / "train.json"
    data2.parent.mkdir()
    shutil.copy(records_file, data2)
    second = _train(tiny_llama, data2, tmp_path / "out2", tmp_path / "cache2", sync_to, env)
    s2 = json.loads((tmp_path / "out2" / "train_summary.json").read_text())
    assert s2["tokenized_from"] == "remote", second[-3000:]
    assert f"Downloaded tokenized data from {run.child('tokenized', key).uri}" in second
    assert "(remote cache," in second and "Uploaded tokenized data" not in second
    assert (tmp_path / "cache2" / f"{key}.npz").is_file()
    for k in ("num_samples", "num_packs", "global_step"):
        assert s2[k] == s1[k]
    assert _losses(tmp_path / "out2") == pytest.approx(_losses(tmp_path / "out1"), abs=1e-6)

    # Another max length is another key: tokenized again and published beside the first.
    third = _train(
        tiny_llama, data2, tmp_path / "out3", tmp_path / "cache2", sync_to, env, "--model_max_length", "200"
    )
    s3_summary = json.loads((tmp_path / "out3" / "train_summary.json").read_text())
    assert s3_summary["tokenized_from"] == "built", third[-3000:]
    tok = {f.name for f in list_run(s3.client(), run) if f.name.startswith("tokenized/") and f.committed}
    assert len(tok) == 2 and f"tokenized/{key}" in tok
