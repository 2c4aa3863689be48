"""Loading the job spec: a path, the spec JSON in the environment, or its s3:// URI."""

from __future__ import annotations

import os
from pathlib import Path

from qa_train.contract import ENV_SPEC, ENV_SPEC_URI, ExitCode
from qa_train.spec import JobSpec, RenderedSpec, SpecError, load_any
from qa_train.storage import RunStore

ENV_VAR = ENV_SPEC


class SpecFetchError(Exception):
    """The spec named by ``QA_JOB_SPEC_URI`` cannot be read: exit 3 (storage) or 2 (malformed URI)."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def read_spec_uri(uri: str) -> str:
    """The spec's text from ``s3://…``: credentials from the standard AWS chain, endpoint AWS_ENDPOINT_URL."""
    try:
        store, name = RunStore.for_object(uri)
    except ValueError as e:
        raise SpecFetchError(f"{ENV_SPEC_URI}: {e}", 2) from None
    try:
        text = store.get_text(name)
    except Exception as e:  # botocore's errors, described by the storage adapter
        from qa_train.storage import describe_error

        raise SpecFetchError(
            f"cannot read the job spec {uri}: {describe_error(e, uri)}", ExitCode.STORAGE
        ) from None
    if text is None:
        raise SpecFetchError(f"cannot read the job spec {uri}: no such object", ExitCode.STORAGE)
    return text


def load_spec(path: str | None) -> RenderedSpec | JobSpec:
    if path:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as e:
            raise SpecError(f"{p}: cannot read job spec: {e.strerror}") from None
        return load_any(text, str(p))
    text = os.environ.get(ENV_VAR)
    if text:
        return load_any(text, f"${ENV_VAR}")
    uri = os.environ.get(ENV_SPEC_URI)
    if uri:
        return load_any(read_spec_uri(uri), uri)
    raise SpecError(
        f"no job spec: pass a path, --spec PATH, the spec JSON in env {ENV_VAR} or its s3:// URI in {ENV_SPEC_URI}"
    )
