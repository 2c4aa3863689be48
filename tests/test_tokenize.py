"""Labels come from character spans + token offsets: exactly the assistant turns and their <|eot|>."""

from __future__ import annotations

import json

import pytest

from qa_train.data.loading import DataError, load_records
from qa_train.data.prompt import EOT, render
from qa_train.data.records import RecordError, record_to_messages
from qa_train.data.tokenize import (
    IGNORE_INDEX,
    SampleTooLongError,
    labels_from_offsets,
    load_tokenized,
    tokenize_records,
)
from qa_train.modeling import load_tokenizer
from tests.conftest import make_records


@pytest.fixture(scope="module")
def tokenizer(tiny_llama):
    return load_tokenizer(str(tiny_llama), 2048)


def _assistant_text(rec: dict) -> str:
    rendered = render(record_to_messages(rec))
    return "".join(rendered.text[a:b] for a, b in rendered.loss_spans)


def test_labels_are_exactly_the_assistant_turns(tokenizer):
    recs = make_records(6, seed=11)
    data = tokenize_records(recs, tokenizer, 2048, show_progress=False)
    assert len(data) == 6
    for rec, ids, labels in zip(recs, data.input_ids, data.labels, strict=True):
        learned = tokenizer.decode([t for t in labels if t != IGNORE_INDEX])
        assert learned == _assistant_text(rec)
        assert learned.count(EOT) == (3 if rec["multihop"] else 2)  # one per assistant turn
        assert "retrieved context:" not in learned and "user:" not in learned
        assert len(ids) == len(labels)


def test_labels_from_offsets_span_edges():
    ids = [10, 11, 12, 13]
    offsets = [(0, 0), (0, 3), (3, 5), (5, 9)]
    assert labels_from_offsets(ids, offsets, [(3, 9)]) == [IGNORE_INDEX, IGNORE_INDEX, 12, 13]
    assert labels_from_offsets(ids, offsets, [(0, 3), (5, 9)]) == [IGNORE_INDEX, 11, IGNORE_INDEX, 13]
    assert labels_from_offsets(ids, offsets, []) == [IGNORE_INDEX] * 4


def test_truncation_drops_samples_without_labels_and_counts_them(tokenizer):
    recs = make_records(4, seed=3)
    data = tokenize_records(recs, tokenizer, 40, show_progress=False)  # the system prompt alone is longer
    assert len(data) == 0
    assert data.stats.dropped_all_masked == 4 and data.stats.truncated == 4


def test_too_long_without_truncation_names_the_record(tokenizer):
    recs = make_records(3, seed=3)
    with pytest.raises(SampleTooLongError, match=r"train.json: record 0: \d+ tokens > model_max_length 64"):
        tokenize_records(recs, tokenizer, 64, source="train.json", truncation=False, show_progress=False)


def test_invalid_record_names_file_index_and_field(tokenizer):
    recs = make_records(3, seed=3)
    del recs[1]["sub_questions"][1]["paragraph"]
    with pytest.raises(RecordError, match=r"d.json: record 1: field 'sub_questions\[1\].paragraph': missing"):
        tokenize_records(recs, tokenizer, 2048, source="d.json", show_progress=False)
    data = tokenize_records(recs, tokenizer, 2048, source="d.json", skip_invalid=True, show_progress=False)
    assert len(data) == 2 and data.stats.skipped_invalid == 1


def test_jsonl_json_and_datasets_inputs_agree(tmp_path, tokenizer):
    import datasets

    recs = make_records(5, seed=4)
    (tmp_path / "a.json").write_text(json.dumps(recs))
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in recs))
    datasets.Dataset.from_list(recs).save_to_disk(str(tmp_path / "ds"))
    loaded = [load_records(tmp_path / n)[0] for n in ("a.json", "a.jsonl", "ds")]
    ids = [tokenize_records(r, tokenizer, 2048, show_progress=False).input_ids for r in loaded]
    assert ids[0] == ids[1] == ids[2]


def test_malformed_json_names_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "a"}\n{"question": \n')
    with pytest.raises(DataError, match=r"bad.jsonl: malformed JSON on line 2"):
        load_records(bad)
    with pytest.raises(DataError, match="no such file"):
        load_records(tmp_path / "missing.json")


def test_cache_is_reused_and_keyed_on_settings(tmp_path, tokenizer):
    src = tmp_path / "t.json"
    src.write_text(json.dumps(make_records(5, seed=5)))
    cache = tmp_path / "cache"
    first = load_tokenized(src, tokenizer, 2048, cache)
    assert len(list(cache.glob("*.npz"))) == 1
    src.write_text("this is not json")  # same mtime/size would be needed to hit the cache; prove it is keyed
    with pytest.raises(DataError):
        load_tokenized(src, tokenizer, 2048, cache)
    src.write_text(json.dumps(make_records(5, seed=5)))
    again = load_tokenized(src, tokenizer, 2048, cache)
    assert again.input_ids == first.input_ids and again.labels == first.labels
    cached_path = next(cache.glob("*.npz"))
    mtime = cached_path.stat().st_mtime_ns
    third = load_tokenized(src, tokenizer, 2048, cache)  # hit: file untouched
    assert cached_path.stat().st_mtime_ns == mtime and third.labels == first.labels
    before = len(list(cache.glob("*.npz")))
    load_tokenized(src, tokenizer, 1024, cache)  # other max_length → other entry
    assert len(list(cache.glob("*.npz"))) == before + 1
