"""Records → token ids and labels, in fast batches, with a cache that rank 0 writes and other ranks read.

Labels come from the renderer's character spans and the tokenizer's offset mapping: a token carries loss when
it starts inside an assistant span. This is exact for any fast tokenizer, unlike searching for the token ids of
"assistant:", which depend on the neighbouring text.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from qa_train.data.prompt import SYSTEM_MESSAGE, render
from qa_train.data.records import RecordError, record_to_messages, validate_record
from qa_train.fsutil import UsageError, atomic_path

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
CACHE_VERSION = "1"


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


def cache_key(source: str, tokenizer: Any, max_length: int, truncation: bool, skip_invalid: bool) -> str:
    h = hashlib.sha256()
    p = Path(source)
    if p.is_file():
        st = p.stat()
        h.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    else:
        h.update(source.encode())
    vocab = json.dumps(sorted(tokenizer.get_vocab().items()))
    h.update(hashlib.sha256(vocab.encode()).digest())
    h.update(f"{type(tokenizer).__name__}|{max_length}|{truncation}|{skip_invalid}|{CACHE_VERSION}".encode())
    h.update(SYSTEM_MESSAGE.encode())
    return h.hexdigest()[:24]


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


def load_tokenized(
    source: str | Path,
    tokenizer: Any,
    max_length: int,
    cache_dir: str | Path | None = None,
    truncation: bool = True,
    skip_invalid: bool = False,
    main_process_first: Any = None,
    is_main_process: bool = True,
) -> TokenizedData:
    """Load + tokenize with a cache. ``main_process_first`` (TrainingArguments.main_process_first) lets rank 0
    build the cache while the other ranks wait, then read it."""
    from contextlib import nullcontext

    from qa_train.data.loading import load_records

    cache_root = Path(cache_dir) if cache_dir else default_cache_dir()
    key = cache_key(str(source), tokenizer, max_length, truncation, skip_invalid)
    path = cache_root / f"{key}.npz"
    ctx = main_process_first(desc=f"tokenize {source}") if main_process_first else nullcontext()
    with ctx:
        if path.exists():
            logger.info("Loading tokenized %s from cache %s", source, path)
            return load_cache(path)
        records, name = load_records(source)
        data = tokenize_records(
            records, tokenizer, max_length, name, truncation, skip_invalid, show_progress=is_main_process
        )
        if is_main_process:
            try:
                save_cache(path, data)
            except OSError as exc:
                logger.warning("Could not write the tokenization cache %s: %s", path, exc)
        return data
