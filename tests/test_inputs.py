"""``qa_train.inputs.fetch_input`` against real servers on loopback: SeaweedFS for s3://, ``http.server`` for
https-style URLs and a stand-in hub (``HF_ENDPOINT``) for hf://. Errors name the URI; the token stays home."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from qa_train.inputs import InputError, fetch_input, local_path_for
from qa_train.storage import upload_dir
from tests.loopback import LoopbackServer

BODY = json.dumps([{"id": i} for i in range(200)]).encode()


class Recorder:
    """A loopback HTTP server with a few misbehaving paths; remembers each request's path and auth header."""

    def __init__(self, redirect_to: str | None = None) -> None:
        self.requests: list[tuple[str, str | None]] = []
        self.redirect_to = redirect_to
        rec = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_a: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                rec.requests.append((self.path, self.headers.get("Authorization")))
                path = self.path.split("?")[0]
                if path.endswith("/missing.json"):
                    return self._reply(404, b"nope")
                if path.endswith("/forbidden.json"):
                    return self._reply(403, b"no")
                if path.endswith("/liar.json"):  # promises 5000 bytes, sends 10, closes
                    self.send_response(200)
                    self.send_header("Content-Length", "5000")
                    self.end_headers()
                    self.wfile.write(b"0123456789")
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return None
                if path.endswith("/slow.json"):
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(BODY)))
                    self.end_headers()
                    time.sleep(4)
                    return None
                if path.endswith("/moved.json") and rec.redirect_to:
                    self.send_response(302)
                    self.send_header("Location", rec.redirect_to)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                return self._reply(200, BODY)

            def _reply(self, code: int, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._http = LoopbackServer(Handler)
        self.url = self._http.url

    def close(self) -> None:
        self._http.close()


@pytest.fixture
def web() -> Iterator[Recorder]:
    r = Recorder()
    yield r
    r.close()


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("QA_INPUT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_local_paths_and_hub_model_ids_are_unchanged(cache):
    assert fetch_input("/data/train.json", what="x") == "/data/train.json"
    assert (
        fetch_input("mistralai/Mistral-7B-v0.1", what="model", expect="folder") == "mistralai/Mistral-7B-v0.1"
    )
    assert not cache.exists()


def test_https_fetch_once_then_cached(web, cache):
    url = f"{web.url}/files/train.json"
    path = fetch_input(url, what="data.train_path", progress=False)
    assert Path(path).read_bytes() == BODY and Path(path).name == "train.json"
    assert path == local_path_for(url) and str(cache) in path
    assert fetch_input(url, what="data.train_path", progress=False) == path
    assert [p for p, _ in web.requests] == ["/files/train.json"]  # the second call did not download
    assert sorted(x.name for x in Path(path).parent.iterdir()) == ["train.json"]  # no temp file left


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("missing.json", "not found (HTTP 404)"),
        ("forbidden.json", "access refused (HTTP 403)"),
        ("liar.json", "size mismatch"),
    ],
)
def test_http_errors_name_the_uri_and_leave_nothing(web, cache, name, expected):
    url = f"{web.url}/d/{name}"
    with pytest.raises(InputError) as e:
        fetch_input(url, what="data.validation_path", progress=False)
    assert str(e.value).startswith(f"data.validation_path: {url}: ") and expected in str(e.value)
    assert e.value.exit_code == 3
    assert not Path(local_path_for(url)).exists()
    folder = Path(local_path_for(url)).parent
    assert not folder.exists() or not any(folder.iterdir())  # no partial file in the cache


def test_timeout_names_the_uri(web, cache):
    url = f"{web.url}/d/slow.json"
    t0 = time.monotonic()
    with pytest.raises(InputError, match=f"{url}: timed out") as e:
        fetch_input(url, what="data.train_path", progress=False, timeout=0.5)
    assert e.value.exit_code == 3 and time.monotonic() - t0 < 15


def test_connection_refused_and_malformed_uris(cache):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(InputError, match=f"http://127.0.0.1:{port}/x.json: cannot connect") as e:
        fetch_input(f"http://127.0.0.1:{port}/x.json", what="d", progress=False, timeout=1)
    assert e.value.exit_code == 3
    for bad, msg in [("ftp://h/x", "unsupported URI scheme"), ("hf://models/a/b/c", "hf://datasets"),
                     ("s3://bucket-only", "s3://bucket/key")]:  # fmt: skip
        with pytest.raises(InputError, match=msg) as e:
            fetch_input(bad, what="d")
        assert e.value.exit_code == 2
    with pytest.raises(InputError, match="cannot be fetched over HTTP") as e:
        fetch_input("https://example.invalid/model", what="model.name_or_path", expect="folder")
    assert e.value.exit_code == 2


def test_hf_uri_goes_to_the_hub_with_the_token_and_only_there(web, cache, monkeypatch):
    other = Recorder()
    hub = Recorder(redirect_to=f"{other.url}/cdn/blob")
    try:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_TOKEN", "hf_secret_token_value")
        path = fetch_input("hf://datasets/org/qa-set/train.json", what="data.train_path", progress=False)
        assert Path(path).read_bytes() == BODY
        assert hub.requests == [
            ("/datasets/org/qa-set/resolve/main/train.json", "Bearer hf_secret_token_value")
        ]
        # a hub redirect to another host (the CDN): followed, without the token
        path = fetch_input("hf://datasets/org/qa-set@v2/moved.json", what="data.train_path", progress=False)
        assert Path(path).name == "moved.json" and Path(path).read_bytes() == BODY
        assert hub.requests[-1] == (
            "/datasets/org/qa-set/resolve/v2/moved.json",
            "Bearer hf_secret_token_value",
        )
        assert other.requests == [("/cdn/blob", None)]
        # a plain https URL on another host never gets it either
        fetch_input(f"{web.url}/x/data.json", what="d", progress=False)
        assert web.requests == [("/x/data.json", None)]
        with pytest.raises(InputError, match="set HF_TOKEN"):
            fetch_input("hf://datasets/org/qa-set/forbidden.json", what="d", progress=False)
    finally:
        other.close()
        hub.close()


def test_s3_file_and_folder_fetch_with_cache_reuse(s3, cache, tmp_path):
    src = tmp_path / "src"
    (src / "ds" / "train").mkdir(parents=True)
    (src / "train.json").write_bytes(BODY)
    (src / "ds" / "dataset_dict.json").write_text('{"splits": ["train"]}')
    (src / "ds" / "train" / "data-00000-of-00001.arrow").write_bytes(b"\0" * 1000)
    upload_dir(src, s3.uri("in"), progress=False)
    path = fetch_input(s3.uri("in/train.json"), what="data.train_path", progress=False)
    assert Path(path).read_bytes() == BODY
    s3.client().delete_object(Bucket=s3.bucket, Key="in/train.json")
    assert fetch_input(s3.uri("in/train.json"), what="data.train_path", progress=False) == path  # cached
    folder = Path(fetch_input(s3.uri("in/ds"), what="data.train_path", expect="any", progress=False))
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == [
        "dataset_dict.json", "train/data-00000-of-00001.arrow"]  # fmt: skip
    with pytest.raises(InputError, match="is a folder"):
        fetch_input(s3.uri("in/ds/"), what="data.hotpot_qa_dev_path", expect="file", progress=False)
    with pytest.raises(InputError, match=f"{s3.uri('in/nothing.json')}: not found") as e:
        fetch_input(s3.uri("in/nothing.json"), what="d", progress=False)
    assert e.value.exit_code == 3
    with pytest.raises(InputError, match="the bucket does not exist"):
        fetch_input("s3://no-such-bucket-here/x.json", what="d", progress=False)


def test_s3_refused_credentials(s3, cache, monkeypatch):
    s3.client().put_object(Bucket=s3.bucket, Key="x.json", Body=b"[]")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-value-123")
    with pytest.raises(InputError, match=f"{s3.uri('x.json')}: access refused") as e:
        fetch_input(s3.uri("x.json"), what="d", progress=False)
    assert "wrong-secret-value-123" not in str(e.value) and e.value.exit_code == 3
