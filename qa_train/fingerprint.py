"""Input fingerprints: a run is bound to the data it started on.

Why: a relaunch with the same run name and a changed training file used to tokenize the new data, resume
the old run's checkpoint and fast-forward the dataloader — half the steps saw the old data, records were
skipped, and nothing said so. The first launch now records the sha256 of every data input in
``<run>/inputs.json`` (object storage; ``output_dir/inputs.json`` too, the only copy without a sync target);
a launch that would resume a checkpoint while an input differs refuses with one line
(:class:`InputsChanged`, exit 2) naming the input, both fingerprints and the ways on. ``--restart_data``
takes the other way explicitly: the run's old checkpoints go, training starts from step 0 and
``train_summary.json`` says so.

Inputs are the local paths ``train`` reads: an ``s3://``, ``https://`` or ``hf://`` input was fetched by
``qa_train run`` into the input cache first, so its content is what is hashed. An ``hf://`` input is also
pinned to its commit when the job is submitted (``launch/jobs/pin.py``): the spec every relaunch reads names it.
The base model is fingerprinted cheaply (its config and tokenizer files, the names and sizes of the weights)
and a change there is a warning, not a refusal: a tiny model rebuilt on a fresh machine need not be
byte-identical.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qa_train.fsutil import UsageError, atomic_write_json
from qa_train.sync.manifest import sha256_file as _sha256_file  # the manifests' own file hash

logger = logging.getLogger("qa_train.fingerprint")
INPUTS_NAME = "inputs.json"  # <run>/inputs.json and output_dir/inputs.json
FORMAT = "qa_train.inputs/1"
# Data inputs bind the run (a difference refuses a resume); the model is recorded and compared with a warning.
DATA_FLAGS = ("--train_path", "--validation_path")
MODEL_FLAG = "--model_name_or_path"
_MODEL_SMALL_FILE = 32 * 1024 * 1024  # model files up to this size are hashed; larger ones by name and size


class InputsChanged(UsageError):
    """A resume whose inputs differ from the ones the run started on (exit 2, nothing trained)."""


def fingerprint_path(path: str | Path) -> dict[str, Any]:
    """``{"sha256", "bytes"[, "files"]}`` of a file, or of a folder (every file's relative path, size and
    sha256, in order); a path that does not exist (a Hub id) is ``{"id": path}``."""
    p = Path(path)
    if p.is_file():
        return {"sha256": _sha256_file(p), "bytes": p.stat().st_size}
    if p.is_dir():
        digest, total, count = hashlib.sha256(), 0, 0
        for f in sorted(x for x in p.rglob("*") if x.is_file()):
            size = f.stat().st_size
            digest.update(f"{f.relative_to(p).as_posix()}\0{size}\0{_sha256_file(f)}\n".encode())
            total, count = total + size, count + 1
        return {"sha256": digest.hexdigest(), "bytes": total, "files": count}
    return {"id": str(path)}


def fingerprint_model(path: str | Path) -> dict[str, Any]:
    """A cheap model fingerprint: small files (config, tokenizer) hashed, weights by name and size only."""
    p = Path(path)
    if not p.is_dir():
        return {"id": str(path)}
    digest, total = hashlib.sha256(), 0
    for f in sorted(x for x in p.rglob("*") if x.is_file()):
        size = f.stat().st_size
        rel = f.relative_to(p).as_posix()
        if rel.startswith(".") or "/." in rel:
            continue
        content = _sha256_file(f) if size <= _MODEL_SMALL_FILE else "-"
        digest.update(f"{rel}\0{size}\0{content}\n".encode())
        total += size
    return {"sha256": digest.hexdigest(), "bytes": total, "weights_hashed": False}


def current_inputs(paths: dict[str, str | None]) -> dict[str, dict[str, Any]]:
    """Flag → ``{"path", ...fingerprint}`` for every input given (``paths`` maps flag → path or None)."""
    out: dict[str, dict[str, Any]] = {}
    for flag, path in paths.items():
        if not path:
            continue
        fp = fingerprint_model(path) if flag == MODEL_FLAG else fingerprint_path(path)
        out[flag] = {"path": str(path), **fp}
    return out


def short(fp: dict[str, Any] | None) -> str:
    """``sha256:0123456789abcdef (1234 bytes)`` — what the one-line error shows of a fingerprint."""
    if not fp:
        return "(none)"
    if "sha256" in fp:
        return f"sha256:{fp['sha256'][:16]} ({fp.get('bytes', '?')} bytes)"
    return f"id {fp.get('id')}"


def _same(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    if not a or not b:
        return not a and not b
    return a.get("sha256", a.get("id")) == b.get("sha256", b.get("id"))


def differences(recorded: dict[str, Any], current: dict[str, Any], flags: tuple[str, ...]) -> list[str]:
    """The flags among ``flags`` whose fingerprint differs (an input added or dropped counts)."""
    return [f for f in flags if not _same(recorded.get(f), current.get(f))]


def changed_line(flag: str, recorded: dict[str, Any], current: dict[str, Any], where: str) -> str:
    """THE one line a refused resume prints (after ``error: ``)."""
    path = (current.get(flag) or recorded.get(flag) or {}).get("path", "?")
    return (
        f"{flag} {path} differs from the data this run started on ({where}): recorded "
        f"{short(recorded.get(flag))}, now {short(current.get(flag))}; resuming would mix the two. Restore the "
        "recorded data to resume, or start over: a new --run_name, or --restart_data (trains from step 0)"
    )


def record_document(inputs: dict[str, Any]) -> dict[str, Any]:
    return {"format": FORMAT, "recorded_at": time.time(), "inputs": inputs}


def parse_record(text: str | bytes, source: str) -> dict[str, Any] | None:
    """The recorded inputs, or None (with a warning) when the record cannot be read: a damaged record must
    not block a run, it is replaced by the current inputs."""
    try:
        doc = json.loads(text)
        if (
            not isinstance(doc, dict)
            or doc.get("format") != FORMAT
            or not isinstance(doc.get("inputs"), dict)
        ):
            raise ValueError(f"not a {FORMAT} record")
    except ValueError as exc:
        logger.warning(
            "Ignoring the unreadable input record %s (%s); recording the current inputs", source, exc
        )
        return None
    return doc["inputs"]


@dataclass
class InputBinding:
    """What ``bind`` found: the current fingerprints, whether a record was there, what --restart_data did."""

    inputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    recorded: dict[str, Any] | None = None
    source: str = ""  # where the record was read
    restarted: dict[str, Any] | None = None  # --restart_data: {"changed": [...], "removed": [...]}
    pending: Callable[[], None] | None = None  # writes the record (world rank 0); see ``record``

    def record(self) -> None:
        """Write the run's record of these inputs, once (called when the data has been read and is usable)."""
        if self.pending is not None:
            pending, self.pending = self.pending, None
            pending()

    @property
    def changed(self) -> list[str]:
        if self.recorded is None:
            return []
        return differences(self.recorded, self.inputs, DATA_FLAGS)

    def summary(self) -> dict[str, Any]:
        """What ``train_summary.json`` carries under ``inputs``."""
        return self.inputs


def read_local_record(output_dir: Path) -> dict[str, Any] | None:
    path = output_dir / INPUTS_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return None
    return parse_record(text, str(path))


def write_local_record(output_dir: Path, inputs: dict[str, Any]) -> None:
    atomic_write_json(output_dir / INPUTS_NAME, record_document(inputs))


def warn_model_change(binding: InputBinding) -> None:
    rec = (binding.recorded or {}).get(MODEL_FLAG)
    cur = binding.inputs.get(MODEL_FLAG)
    if rec and cur and not _same(rec, cur):
        logger.warning(
            "%s %s differs from the model this run started on (recorded %s, now %s): resuming anyway",
            MODEL_FLAG,
            cur.get("path"),
            short(rec),
            short(cur),
        )


def input_paths(model_args: Any, data_args: Any) -> dict[str, str | None]:
    """Flag → path of the inputs ``train`` reads (what ``start_sync`` binds the run to)."""
    return {
        "--train_path": data_args.train_path,
        "--validation_path": data_args.validation_path,
        MODEL_FLAG: model_args.model_name_or_path,
    }


def summary_fields(binding: InputBinding | None) -> dict[str, Any]:
    """``train_summary.json``'s ``inputs`` (the fingerprints) and ``restarted_data`` (None, or what
    --restart_data changed and removed: training started from step 0)."""
    if binding is None:
        return {}
    restarted = None if binding.restarted is None else {"from_step": 0, **binding.restarted}
    return {"inputs": binding.inputs, "restarted_data": restarted}
