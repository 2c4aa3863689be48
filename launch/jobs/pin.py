"""Pin ``hf://datasets/…`` inputs to the commit they resolve to at submit time (issue 23 item 1).

Why: the shipped jobs read an unpinned ``hf://datasets/…/train.json``; a managed relaunch days later would
fetch whatever ``main`` holds then, and resume a checkpoint trained on other data. Rewriting the URI to
``hf://datasets/<org>/<name>@<commit>/<path>`` in the rendered spec (what ``<run>/spec.json`` and every
relaunch read) makes every launch fetch the same bytes; the container still records and checks their sha256
(``qa_train.fingerprint``). A URI that already names a revision is left as it is.
"""

from __future__ import annotations

from typing import Any

from qa_train.contract import hub_endpoint

DATA_FIELDS = ("train_path", "validation_path", "hotpot_qa_dev_path")


class PinError(RuntimeError):
    """The hub cannot say which commit an input is at (one line naming the field and URI)."""


def _split(uri: str) -> tuple[str, str, str, str] | None:
    """``hf://datasets/org/name[@rev]/path`` → (org, name, rev or '', path); None for anything else."""
    parts = uri.removeprefix("hf://").split("/")
    if not uri.startswith("hf://") or len(parts) < 4 or parts[0] != "datasets":
        return None
    name, _, rev = parts[2].partition("@")
    return parts[1], name, rev, "/".join(parts[3:])


def resolve_commit(org: str, name: str, revision: str, token: str | None, timeout: float = 10.0) -> str:
    """The commit sha ``revision`` of dataset ``org/name`` points at (the hub's revision API)."""
    import requests

    url = f"{hub_endpoint()}/api/datasets/{org}/{name}/revision/{revision}"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    resp = requests.get(url, headers=headers, timeout=timeout)
    if resp.status_code != 200:
        raise PinError(f"{url} answered HTTP {resp.status_code}")
    sha = (
        resp.json().get("sha")
        if resp.headers.get("content-type", "").startswith("application/json")
        else None
    )
    if not isinstance(sha, str) or not sha:
        raise PinError(f"{url} named no commit")
    return sha


def pin_hub_inputs(rendered: Any, secrets: dict[str, str]) -> tuple[Any, list[str]]:
    """The rendered spec with every unpinned ``hf://`` data input pinned to its current commit, and one line
    per pin for the user. ``PinError`` (one line) when the hub cannot be asked."""
    job = rendered.job
    updates: dict[str, str] = {}
    notes: list[str] = []
    for field in DATA_FIELDS:
        uri = getattr(job.data, field, None)
        parts = _split(uri) if isinstance(uri, str) else None
        if parts is None or parts[2]:
            continue
        org, name, _, path = parts
        try:
            sha = resolve_commit(org, name, "main", secrets.get("HF_TOKEN"))
        except Exception as e:  # noqa: BLE001 - requests' errors, a non-JSON answer: one line either way
            why = str(e) if isinstance(e, PinError) else f"{type(e).__name__}: {e}"
            raise PinError(
                f"data.{field} {uri}: cannot resolve its commit on the hub ({why}); name one yourself "
                f"(hf://datasets/{org}/{name}@<commit>/{path})"
            ) from None
        updates[field] = f"hf://datasets/{org}/{name}@{sha}/{path}"
        notes.append(f"data.{field}: {uri} pinned to commit {sha[:12]} (every launch reads the same data)")
    if not updates:
        return rendered, []
    new_job = job.model_copy(update={"data": job.data.model_copy(update=updates)})
    return rendered.model_copy(update={"job": new_job}), notes


def pin_plan(plan: Any) -> Any:
    """``plan`` with its spec's ``hf://`` inputs pinned (the request rebuilt from the pinned spec), after the
    cheap checks (cloud keys, storage, image) passed. Best effort: a hub that cannot be asked is one
    ``warning:`` line and the inputs stay unpinned — the container still refuses to resume a checkpoint on data
    whose sha256 differs from the run's record."""
    import sys

    from launch.jobs.plan import make_plan

    try:
        spec, notes = pin_hub_inputs(plan.spec, plan.secrets)
    except PinError as e:
        print(f"warning: not pinned: {e}", file=sys.stderr)
        return plan
    for note in notes:
        print(note, file=sys.stderr)
    if not notes:
        return plan
    return make_plan(spec, plan.secrets, plan.options, computes=plan.computes)
