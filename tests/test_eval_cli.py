"""``python -m qa_train eval`` with the hf backend on a tiny model; bad input; retrievers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from qa_train.data.prompt import EOT
from qa_train.evaluate.cli import SUMMARY_KEYS, main, summary_path_for
from qa_train.fsutil import write_marker
from qa_train.retrieval import BM25Retriever, make_retriever_factory, paragraphs_from_context
from tests.conftest import make_hotpot


@pytest.fixture(scope="module")
def no_eot_model(tiny_llama: Path, tmp_path_factory) -> Path:
    """The tiny model with QA tokens whose <|eot|> and </s> logits are pinned to 0 (others are ~±3): it never
    stops on its own, so only max_new_tokens / max_hops can end a question."""
    from transformers import AutoModelForCausalLM

    from qa_train.modeling import load_tokenizer, resize_embeddings

    tok = load_tokenizer(str(tiny_llama))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama), dtype=torch.float32)
    resize_embeddings(model, tok)
    with torch.no_grad():
        for tid in (tok.convert_tokens_to_ids(EOT), tok.eos_token_id):
            model.lm_head.weight[tid] = 0.0
    out = tmp_path_factory.mktemp("m") / "no-eot"
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    write_marker(out, "merge")  # eval takes only finished model folders
    return out


def _eval(model: Path, data: Path, save: Path, *extra: str) -> int:
    return main(["--model_path", str(model), "--hotpot_qa_dev_path", str(data), "--save_path", str(save),
                 "--inference_type", "hf", "--no_progress", *extra])  # fmt: skip


def test_never_eot_model_terminates_and_batch_size_is_invariant(
    no_eot_model: Path, hotpot_file: Path, tmp_path
):
    args = ("--limit", "8", "--max_new_tokens", "6", "--max_hops", "2")
    assert _eval(no_eot_model, hotpot_file, tmp_path / "b8.jsonl", "--batch_size", "8", *args) == 0
    assert _eval(no_eot_model, hotpot_file, tmp_path / "b1.jsonl", "--batch_size", "1", *args) == 0
    rows8 = [json.loads(x) for x in (tmp_path / "b8.jsonl").read_text().splitlines()]
    rows1 = [json.loads(x) for x in (tmp_path / "b1.jsonl").read_text().splitlines()]
    assert len(rows8) == 8
    assert [r["messages"] for r in rows8] == [r["messages"] for r in rows1]
    summary = json.loads(summary_path_for(tmp_path / "b8.jsonl").read_text())
    assert set(SUMMARY_KEYS) <= set(summary) and summary["num_questions"] == 8
    for row in rows8:
        assert set(row) >= {
            "question",
            "gold",
            "prediction",
            "messages",
            "hops",
            "recall",
            "containing",
            "error",
        }
        assert row["hops"] <= 2
    assert summary["num_errors"] == sum(1 for r in rows8 if r["error"])


def test_hf_backend_stops_only_at_max_new_tokens(no_eot_model: Path) -> None:
    from qa_train.inference.backends import HFBackend

    prompts = ["assistant:", "user: a much longer prompt about the river and the bridge<|eot|>\nassistant:"]
    short = HFBackend(str(no_eot_model), max_new_tokens=4).generate(prompts)
    longer = HFBackend(str(no_eot_model), max_new_tokens=7).generate(prompts)
    for a, b in zip(short, longer, strict=True):
        assert b.startswith(a) and len(b) > len(a) and EOT not in b  # ran to the limit both times
    assert HFBackend(str(no_eot_model), max_new_tokens=4).generate(prompts[1:]) == short[1:]  # padding-free


def test_summary_values_from_rows(tmp_path: Path, hotpot_file: Path, no_eot_model: Path) -> None:
    save = tmp_path / "out.jsonl"
    assert _eval(no_eot_model, hotpot_file, save, "--limit", "3", "--max_new_tokens", "3") == 0
    rows = [json.loads(x) for x in save.read_text().splitlines()]
    summary = json.loads(summary_path_for(save).read_text())
    assert summary["recall"] == pytest.approx(sum(r["recall"] for r in rows) / 3)
    assert summary["avg_hops"] == pytest.approx(sum(r["hops"] for r in rows) / 3)
    assert summary["questions_per_second"] > 0
    assert [r["gold"] for r in rows] == [r["answer"] for r in json.loads(hotpot_file.read_text())[:3]]
    assert not list(tmp_path.glob(".*tmp"))  # no temp files left behind


def _bad(tmp_path: Path, name: str, content: str) -> Path:
    path = tmp_path / name
    path.write_text(content)
    return path


@pytest.mark.parametrize(
    ("content", "needles"),
    [
        (None, ["no such file"]),
        ("[{\"question\": ", ["malformed JSON", "line 1"]),
        ("", ["empty"]),
        (json.dumps([{"question": "q?", "context": [["t", ["s"]]]}]), ["record 0", "'answer'", "missing"]),
        (json.dumps(make_hotpot(2)[:1] + [{**make_hotpot(2)[1], "context": [["t", "not a list"]]}]),
         ["record 1", "_id=q1", "context[0]"]),
        (json.dumps([{"question": 3, "answer": "a", "context": [["t", ["s"]]]}]), ["record 0", "'question'"]),
        ("{\"question\": \"q\"}\nnot json\n", ["line 2"]),
        ("[]", ["no records"]),
        ("{\"data\": []}", ["record 0", "'question'", "missing"]),
    ],
)  # fmt: skip
def test_bad_input_is_one_clear_error(tmp_path: Path, content, needles, capsys) -> None:
    data = tmp_path / "dev.json" if content is None else _bad(tmp_path, "dev.json", content)
    save = tmp_path / "out.jsonl"
    # the model path does not exist: input must be rejected before any model is loaded
    assert _eval(tmp_path / "no-model", data, save) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(data) in err
    for needle in needles:
        assert needle in err
    assert not save.exists() and not summary_path_for(save).exists()


def test_stale_summary_removed_on_failure(tmp_path: Path, capsys) -> None:
    save = tmp_path / "out.jsonl"
    summary_path_for(save).write_text("{}")
    assert _eval(tmp_path / "no-model", tmp_path / "missing.json", save) == 2
    assert not summary_path_for(save).exists()


def test_missing_model_is_clear(tmp_path: Path, hotpot_file: Path, capsys) -> None:
    assert _eval(tmp_path / "no-model", hotpot_file, tmp_path / "o.jsonl", "--limit", "1") == 2
    assert "--model_path" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()


def test_vllm_missing_is_clear(tmp_path: Path, hotpot_file: Path, tiny_llama: Path, capsys) -> None:
    pytest.importorskip("torch")
    try:
        import vllm  # noqa: F401

        pytest.skip("vllm is installed here")
    except ImportError:
        pass
    rc = main(["--model_path", str(tiny_llama), "--hotpot_qa_dev_path", str(hotpot_file), "--save_path",
               str(tmp_path / "o.jsonl"), "--inference_type", "vllm", "--limit", "1"])  # fmt: skip
    assert rc == 2 and "needs the vllm package" in capsys.readouterr().err


def test_e5_without_model_is_clear(tmp_path: Path, hotpot_file: Path, tiny_llama: Path, capsys) -> None:
    rc = _eval(tiny_llama, hotpot_file, tmp_path / "o.jsonl", "--retriever", "e5", "--e5_model",
               str(tmp_path / "no-such-e5"), "--limit", "1")  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "--retriever e5" in err


def test_bm25_retrieves_the_matching_paragraph() -> None:
    rec = make_hotpot(1, seed=5)[0]
    paragraphs = paragraphs_from_context(rec["context"])
    title, sents = rec["context"][0]
    assert paragraphs[0] == f"{title}. " + " ".join("".join(sents).split())  # as the training paragraphs
    assert paragraphs_from_context(rec["context"], "original")[0] == ". ".join([*sents, title])
    retriever = BM25Retriever(paragraphs, num_paragraphs=1)
    assert retriever(f"The answer is {rec['answer']} {rec['context'][0][0]}") == paragraphs[0]
    two = make_retriever_factory("bm25", num_paragraphs=2)(paragraphs)
    assert two(rec["context"][2][0]).startswith(paragraphs[2])
    assert len(two("zzz unknown")) > 0  # no overlap: still returns paragraphs (in order)


def test_unicode_and_empty_paragraphs() -> None:
    retriever = BM25Retriever(["Zürich is in Switzerland. Zürich", "", "Paris. France"], 1)
    assert retriever("zürich") == "Zürich is in Switzerland. Zürich"
