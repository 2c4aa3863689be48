"""Records → token ids and labels, in fast batches, with a cache that rank 0 writes and other ranks read.

Labels come from the renderer's character spans and the tokenizer's offset mapping: a token carries loss when
it starts inside an assistant span. This is exact for any fast tokenizer, unlike searching for the token ids of
"assistant:", which depend on the neighbouring text.

The cache key (``cache_identity``) is what the tokens depend on and nothing else: the data's sha256 (not its
path or mtime, so a relaunch on another machine with the data in another folder finds the same key), the
tokenizer's own serialization, the prompt template (the renderer's source), max length, truncation and
``skip_invalid``. Packing is left out on purpose: packs are planned from the cached lengths in milliseconds,
and keying on it would only rebuild identical tokens. The same key names the copy in object storage
(``<run>/tokenized/<key>/``, ``qa_train.sync.tokenized``), so a relaunch downloads instead of re-tokenizing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
from tqdm.auto import tqdm

from qa_train.data.prompt import SYSTEM_MESSAGE, render
from qa_train.data.records import RecordError, record_to_messages, validate_record
from qa_train.fsutil import UsageError, atomic_path

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
CACHE_VERSION = "2"  # 2: content-addressed key (data sha256, tokenizer serialization, template source)
Origin = Literal["local", "remote", "built"]


class SampleTooLongError(UsageError):
    """A sample exceeds max_length while truncation is off."""


@dataclass
class TokenizeStats:
    records: int = 0
    kept: int = 0
    skipped_invalid: int = 0
    dropped_all_masked: int = 0
    truncated: int = 0
    tokens: int = 0
    label_tokens: int = 0


@dataclass
class TokenizedData:
    input_ids: list[list[int]] = field(default_factory=list)
    labels: list[list[int]] = field(default_factory=list)
    stats: TokenizeStats = field(default_factory=TokenizeStats)
    # Where these tokens came from: the local cache, the run's remote cache, or tokenized now.
    origin: Origin = "built"

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> list[int]:
        return [len(x) for x in self.input_ids]


def labels_from_offsets(
    input_ids: list[int], offsets: list[tuple[int, int]], spans: list[tuple[int, int]]
) -> list[int]:
    """Copy ids whose token starts inside one of the [start, end) spans; everything else is IGNORE_INDEX."""
    ids = np.asarray(input_ids, dtype=np.int64)
    if not spans or ids.size == 0:
        return [IGNORE_INDEX] * len(input_ids)
    off = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    bounds = np.asarray(spans, dtype=np.int64).reshape(-1)
    # Index of the first bound > start: odd means start lies in [s_k, e_k).
    pos = np.searchsorted(bounds, off[:, 0], side="right")
    inside = (pos % 2 == 1) & (off[:, 1] > off[:, 0])
    return np.where(inside, ids, IGNORE_INDEX).tolist()


def tokenize_records(
    records: list[Any],
    tokenizer: Any,
    max_length: int,
    source: str = "<records>",
    truncation: bool = True,
    skip_invalid: bool = False,
    batch_size: int = 256,
    show_progress: bool = True,
) -> TokenizedData:
    """Validate, render and tokenize; drops (and counts) samples left without any loss token."""
    out = TokenizedData()
    stats = out.stats
    stats.records = len(records)
    texts: list[str] = []
    spans: list[list[tuple[int, int]]] = []
    indices: list[int] = []
    for i, rec in enumerate(records):
        try:
            validate_record(rec, source, i)
        except RecordError:
            if not skip_invalid:
                raise
            stats.skipped_invalid += 1
            continue
        rendered = render(record_to_messages(rec))
        texts.append(rendered.text)
        spans.append(rendered.loss_spans)
        indices.append(i)
    bar = tqdm(
        total=len(texts), desc=f"Tokenizing {Path(source).name}", unit="rec", disable=not show_progress
    )
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(
            texts[start : start + batch_size],
            add_special_tokens=True,
            return_offsets_mapping=True,
            truncation=False,
            padding=False,
        )
        for j, (ids, offs) in enumerate(zip(enc["input_ids"], enc["offset_mapping"], strict=True)):
            labels = labels_from_offsets(ids, offs, spans[start + j])
            if len(ids) > max_length:
                if not truncation:
                    raise SampleTooLongError(
                        f"{source}: record {indices[start + j]}: {len(ids)} tokens > model_max_length {max_length} "
                        "and truncation is off (--truncation False); raise --model_max_length or turn truncation on"
                    )
                ids, labels = ids[:max_length], labels[:max_length]
                stats.truncated += 1
            n_label = sum(1 for x in labels[1:] if x != IGNORE_INDEX)
            if n_label == 0:
                stats.dropped_all_masked += 1
                continue
            out.input_ids.append(list(ids))
            out.labels.append(labels)
            stats.tokens += len(ids)
            stats.label_tokens += n_label
        bar.update(len(enc["input_ids"]))
    bar.close()
    stats.kept = len(out.input_ids)
    if stats.dropped_all_masked:
        logger.warning(
            "%s: dropped %d records whose labels were all masked after truncation",
            source,
            stats.dropped_all_masked,
        )
    if stats.skipped_invalid:
        logger.warning(
            "%s: skipped %d invalid records (--skip_invalid_records)", source, stats.skipped_invalid
        )
    return out


def _sha256_file(path: Path, h: Any = None) -> Any:
    h = h or hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 22):
            h.update(block)
    return h


def data_fingerprint(source: str) -> str:
    """sha256 of the data's bytes (a ``datasets`` folder: of every file, with its relative path)."""
    p = Path(source)
    if p.is_file():
        return _sha256_file(p).hexdigest()
    h = hashlib.sha256()
    if p.is_dir():
        for f in sorted(x for x in p.rglob("*") if x.is_file()):
            h.update(f.relative_to(p).as_posix().encode() + b"\0")
            _sha256_file(f, h)
    else:
        h.update(source.encode())
    return h.hexdigest()


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """sha256 of the tokenizer's full serialization (vocab, merges, normalizer, added tokens, post-processor)
    for a fast tokenizer; of its vocab and special tokens otherwise. Same tokenizer → same key anywhere."""
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    extra = {k: getattr(tokenizer, k, None) for k in ("add_bos_token", "add_eos_token", "padding_side")}
    h.update(json.dumps([extra, sorted(map(str, tokenizer.all_special_tokens))], default=str).encode())
    return h.hexdigest()


def template_fingerprint() -> str:
    """sha256 of the renderer's source (prompt.py, records.py): any change to the chat format or to how a
    record becomes messages is a new template version, without anyone having to remember a bump."""
    from qa_train.data import prompt, records

    h = hashlib.sha256(SYSTEM_MESSAGE.encode())
    for mod in (prompt, records):
        h.update(Path(mod.__file__).read_bytes())
    return h.hexdigest()


def cache_identity(
    source: str, tokenizer: Any, max_length: int, truncation: bool, skip_invalid: bool
) -> dict[str, Any]:
    """Everything the cached tokens depend on (stored beside the remote copy as ``key.json``)."""
    return {
        "cache_version": CACHE_VERSION,
        "data_sha256": data_fingerprint(source),
        "tokenizer_sha256": tokenizer_fingerprint(tokenizer),
        "template_sha256": template_fingerprint(),
        "max_length": int(max_length),
        "truncation": bool(truncation),
        "skip_invalid": bool(skip_invalid),
    }


def key_of(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]


def cache_key(source: str, tokenizer: Any, max_length: int, truncation: bool, skip_invalid: bool) -> str:
    """The one cache key, local file name and remote folder name alike."""
    return key_of(cache_identity(source, tokenizer, max_length, truncation, skip_invalid))


def save_cache(path: Path, data: TokenizedData) -> None:
    """Flat arrays in one .npz, written to a temp name then renamed (never a half cache)."""
    lengths = np.asarray(data.lengths, dtype=np.int64)
    flat_ids = np.fromiter((t for s in data.input_ids for t in s), dtype=np.int64, count=int(lengths.sum()))
    flat_labels = np.fromiter((t for s in data.labels for t in s), dtype=np.int64, count=int(lengths.sum()))
    with atomic_path(path) as tmp:  # ends in .npz, so np.savez keeps the name
        np.savez(
            tmp, lengths=lengths, input_ids=flat_ids, labels=flat_labels, stats=json.dumps(asdict(data.stats))
        )


def load_cache(path: Path) -> TokenizedData:
    with np.load(path) as z:
        lengths = z["lengths"]
        ids, labels = z["input_ids"], z["labels"]
        stats = TokenizeStats(**json.loads(str(z["stats"])))
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    out = TokenizedData(stats=stats)
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        out.input_ids.append(ids[a:b].tolist())
        out.labels.append(labels[a:b].tolist())
    return out


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "qa_train" / "tokenized"


class RemoteCache(Protocol):
    """The run's copy in object storage (``qa_train.sync.tokenized.RemoteTokenCache``); failures warn."""

    def fetch(self, key: str, dest: Path) -> bool: ...

    def has(self, key: str) -> bool: ...

    def publish(self, key: str, path: Path, identity: dict[str, Any]) -> bool: ...


def _try_load(path: Path, origin: Origin) -> TokenizedData | None:
    """The cache file's data, or None (with a warning) when it cannot be read: a bad cache is rebuilt."""
    try:
        data = load_cache(path)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        logger.warning("Ignoring unreadable tokenization cache %s (%s): tokenizing again", path, exc)
        return None
    data.origin = origin
    return data


def load_tokenized(
    source: str | Path,
    tokenizer: Any,
    max_length: int,
    cache_dir: str | Path | None = None,
    truncation: bool = True,
    skip_invalid: bool = False,
    main_process_first: Any = None,
    is_main_process: bool = True,
    remote: RemoteCache | None = None,
) -> TokenizedData:
    """Load + tokenize with a cache: local file, else the run's remote copy (``remote``, rank 0 only), else
    tokenize (and publish to ``remote`` once). ``main_process_first`` (TrainingArguments.main_process_first)
    lets rank 0 fill the local cache while the other ranks wait, then read it. ``.origin`` says which."""
    from contextlib import nullcontext

    from qa_train.data.loading import load_records

    cache_root = Path(cache_dir) if cache_dir else default_cache_dir()
    identity = cache_identity(str(source), tokenizer, max_length, truncation, skip_invalid)
    key = key_of(identity)
    path = cache_root / f"{key}.npz"
    remote = remote if is_main_process else None
    ctx = main_process_first(desc=f"tokenize {source}") if main_process_first else nullcontext()
    data: TokenizedData | None = None
    with ctx:
        if path.exists():
            data = _try_load(path, "local")
            if data is not None:
                logger.info("Loading tokenized %s from cache %s", source, path)
        if data is None and remote is not None:
            cache_root.mkdir(parents=True, exist_ok=True)
            if remote.fetch(key, path):
                data = _try_load(path, "remote")
        if data is None:
            records, name = load_records(source)
            data = tokenize_records(
                records, tokenizer, max_length, name, truncation, skip_invalid, show_progress=is_main_process
            )
            if is_main_process:
                try:
                    save_cache(path, data)
                except OSError as exc:
                    logger.warning("Could not write the tokenization cache %s: %s", path, exc)
    # Outside main_process_first: the other ranks read the local file while rank 0 uploads. Built now: the
    # remote copy was missing or bad, replace it; found locally: upload only when the run has none yet.
    if remote is not None and path.exists():
        if data.origin == "built" or data.origin == "local" and not remote.has(key):
            remote.publish(key, path, identity)
    return data
