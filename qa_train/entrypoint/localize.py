"""Input localization: remote inputs (s3:// / https:// / hf://) become cache paths fetched by an ``inputs`` stage."""

from __future__ import annotations

import sys
from pathlib import Path

from qa_train.contract import ExitCode
from qa_train.entrypoint.stages import Stage
from qa_train.spec import JobSpec


def _input_fields(job: JobSpec) -> list[tuple[str, str, str]]:
    """(field, value, expect) of every input a spec names (data files, model, tiny-model tokenizer text)."""
    d = job.data
    out = [("data.train_path", d.train_path, "any")]
    out += [("data.validation_path", d.validation_path, "any")] if d.validation_path else []
    out += [("data.hotpot_qa_dev_path", d.hotpot_qa_dev_path, "file")] if d.hotpot_qa_dev_path else []
    if job.model.name_or_path:
        out.append(("model.name_or_path", job.model.name_or_path, "folder"))
    if job.model.make_tiny is not None and job.model.make_tiny.data:
        out.append(("model.make_tiny.data", job.model.make_tiny.data, "any"))
    return out


def localize(
    job: JobSpec, cache_dir: str | None = None, backend: str | None = None
) -> tuple[JobSpec, Stage | None]:
    """The job with every input URI replaced by its cache path, and the ``inputs`` stage that fetches them.

    On a cloud backend (no /data mount) a data path that does not exist there fails this stage at once, not
    the eval stage hours later."""
    from qa_train.inputs import is_remote, local_path_for

    fields = _input_fields(job)
    remote = [(f, u, e) for f, u, e in fields if is_remote(u)]
    cloud = (backend or "").lower() in ("vast", "runpod", "runpod-cluster")
    absent = [(f, u) for f, u, _ in fields if cloud and f.startswith("data.") and not is_remote(u)]
    if not remote and not absent:
        return job, None
    local = {u: local_path_for(u, cache_dir) for _, u, _ in remote}
    data = job.data.model_copy(
        update={k: local.get(v, v) for k, v in job.data.model_dump().items() if isinstance(v, str)}
    )
    model = job.model
    if model.name_or_path in local:
        model = model.model_copy(update={"name_or_path": local[model.name_or_path]})
    if model.make_tiny is not None and model.make_tiny.data in local:
        model = model.model_copy(
            update={"make_tiny": model.make_tiny.model_copy(update={"data": local[model.make_tiny.data]})}
        )
    new_job = job.model_copy(update={"data": data, "model": model})

    def fetch_all() -> tuple[int, str | None]:
        from qa_train.inputs import InputError, fetch_input

        for what, path in absent:
            if not Path(path).exists():
                return ExitCode.USAGE, (
                    f"{what}: {path} does not exist on this {backend} instance (a cloud host has no /data "
                    "mount): use s3://… (python launch/submit.py upload-data), https://… or hf://datasets/…"
                )
        for what, uri, expect in remote:
            try:
                path = fetch_input(uri, cache_dir, what=what, expect=expect)  # type: ignore[arg-type]
            except InputError as e:
                return e.exit_code, str(e)
            print(f"[run] {what}: {uri} → {path}", file=sys.stderr, flush=True)
        return 0, None

    return new_job, Stage("inputs", [], action=fetch_all)
