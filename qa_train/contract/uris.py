"""Input URIs a job spec may name (``s3://``, ``https://``, ``hf://datasets/…``): parsing only, no I/O.

S3 URIs themselves are parsed by the storage adapter (``qa_train.storage.S3Location``)."""

from __future__ import annotations

import os

# -- inputs: the URI forms a spec's data/model paths may take (the launcher may check them before renting) --

HF_SCHEME = "hf://"
DEFAULT_HF_ENDPOINT = "https://huggingface.co"


def hub_endpoint(env: dict[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    return (env.get("HF_ENDPOINT") or DEFAULT_HF_ENDPOINT).rstrip("/")


def input_kind(path: str) -> str:
    """``s3`` | ``http`` | ``hf`` | ``local`` (``ValueError`` for another ``scheme://``)."""
    if path.startswith("s3://"):
        return "s3"
    if path.startswith(("https://", "http://")):
        return "http"
    if path.startswith(HF_SCHEME):
        return "hf"
    if "://" in path:
        raise ValueError(f"{path!r}: unsupported URI scheme (use s3://, https://, hf://datasets/… or a path)")
    return "local"


def hub_file_url(uri: str, env: dict[str, str] | None = None) -> str:
    """``hf://datasets/<org>/<name>[@<revision>]/<path>`` → ``<hub>/datasets/<org>/<name>/resolve/<rev>/<path>``.

    The hub is ``HF_ENDPOINT`` (else huggingface.co); revision defaults to ``main``."""
    rest = uri[len(HF_SCHEME) :] if uri.startswith(HF_SCHEME) else ""
    parts = rest.split("/")
    if len(parts) < 4 or parts[0] != "datasets" or not all(parts[1:]):
        raise ValueError(f"{uri!r}: expected hf://datasets/<org>/<name>/<path to a file>")
    org, name, path = parts[1], parts[2], "/".join(parts[3:])
    name, _, revision = name.partition("@")
    if not name or any(p in (".", "..") for p in parts):
        raise ValueError(f"{uri!r}: expected hf://datasets/<org>/<name>/<path to a file>")
    return f"{hub_endpoint(env)}/datasets/{org}/{name}/resolve/{revision or 'main'}/{path}"
