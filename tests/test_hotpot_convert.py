"""convert-hotpot: HotpotQA -> QA Expert records, through the real CLI entry point."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

from qa_train.__main__ import main as cli
from qa_train.data.hotpot import convert_record
from qa_train.data.prompt import render_prompt
from qa_train.data.records import RecordError, record_to_messages, validate_record
from tests.conftest import SHARED_DATA, make_hotpot

REAL_DEV = SHARED_DATA / "hotpot_dev_distractor_v1_random_500.json"


def _check_against_source(out: list[dict], src: list[dict], path: Path) -> None:
    assert len(out) == len(src)
    for i, (rec, hp) in enumerate(zip(out, src, strict=True)):
        validate_record(rec, str(path), i)
        titles = list(dict.fromkeys(t for t, _ in hp["supporting_facts"]))
        ctx = dict(hp["context"])
        assert len(rec["sub_questions"]) == len(titles)
        assert all(
            s["paragraph"].startswith(t + ". ") for s, t in zip(rec["sub_questions"], titles, strict=True)
        )
        assert rec["multihop"] is (len(titles) >= 2)
        assert rec["answer"] == hp["answer"].strip()
        assert rec["final_answer"].endswith(f"Answer: {hp['answer'].strip()}")
        assert rec["meta_info"]["src"] == "hotpotqa" and rec["meta_info"]["id"] == hp["_id"]
        for sub, title in zip(rec["sub_questions"], titles, strict=True):
            assert title in sub["question"]
            assert sub["long_answer"].startswith("The provided knowledge mentions that ")
            assert "\nAnswer: " in sub["long_answer"]
            for t, k in hp["supporting_facts"]:
                if (
                    t == title
                ):  # every supporting sentence is quoted in the long answer and is in the paragraph
                    sentence = " ".join(ctx[t][k].split())
                    assert sentence in sub["long_answer"] and sentence in sub["paragraph"]
        render_prompt(record_to_messages(rec))  # trainable: renders into the chat format


def test_cli_converts_json_list(hotpot_file, tmp_path, capsys):
    out = tmp_path / "qa.json"
    assert cli(["convert-hotpot", str(hotpot_file), str(out)]) == 0
    records = json.loads(out.read_text())
    src = json.loads(hotpot_file.read_text())
    _check_against_source(records, src, out)
    assert {r["multihop"] for r in records} == {True, False}
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["records"] == len(src) and summary["multihop"] == sum(r["multihop"] for r in records)
    assert not list(tmp_path.glob(".*.tmp*")), "no temporary file left behind"


def test_jsonl_in_and_out_with_limit(tmp_path):
    src = make_hotpot(10, seed=5)
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in src))
    out = tmp_path / "sub" / "out.jsonl"
    assert cli(["convert-hotpot", str(inp), str(out), "--limit", "4"]) == 0
    lines = out.read_text().splitlines()
    assert len(lines) == 4
    _check_against_source([json.loads(x) for x in lines], src[:4], out)


def test_sub_question_order_follows_first_appearance():
    rec = make_hotpot(2, seed=1)[1]
    t0, t1 = rec["context"][0][0], rec["context"][1][0]
    rec["supporting_facts"] = [[t1, 2], [t0, 1], [t1, 0]]
    out = convert_record(rec, "x.json", 0)
    assert [s["paragraph"].split(". ", 1)[0] for s in out["sub_questions"]] == [t1, t0]
    # sentences of one paragraph are quoted in document order, the gold answer becomes the sub-answer
    first = out["sub_questions"][0]["long_answer"]
    s0, s2 = (" ".join(rec["context"][1][1][k].split()) for k in (0, 2))
    assert first.index(s0) < first.index(s2)
    assert out["sub_questions"][1]["answer"] == rec["answer"]  # "The answer is <gold>." is t0's sentence 1


@pytest.mark.parametrize(
    ("mutate", "field", "problem"),
    [
        (lambda r: r.pop("question"), "question", "missing"),
        (lambda r: r.update(answer=""), "answer", "non-empty string"),
        (lambda r: r.update(context="oops"), "context", "non-empty list"),
        (lambda r: r["context"].__setitem__(1, ["t", "not a list"]), "context[1]", "[title, [sentences]]"),
        (lambda r: r.update(supporting_facts=[]), "supporting_facts", "non-empty list"),
        (lambda r: r["supporting_facts"].append(["Nowhere", 0]), "supporting_facts[1]", "not in context"),
        (
            lambda r: r["supporting_facts"].append([r["context"][0][0], 99]),
            "supporting_facts[1]",
            "out of range",
        ),
        (
            lambda r: r["supporting_facts"].append([r["context"][0][0], "1"]),
            "supporting_facts[1]",
            "sent_idx",
        ),
    ],
)
def test_bad_record_names_file_record_and_field(tmp_path, capsys, mutate, field, problem):
    src = make_hotpot(5, seed=2)
    bad = copy.deepcopy(src[4 - 1 - 1])  # record 2 is single-hop (even index)
    mutate(bad)
    src[2] = bad
    inp, out = tmp_path / "bad.json", tmp_path / "out.json"
    inp.write_text(json.dumps(src))
    assert cli(["convert-hotpot", str(inp), str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{inp}: record 2: field '{field}'" in err and problem in err
    assert not out.exists() and not list(tmp_path.glob(".*.tmp*"))


def test_skip_invalid_counts(tmp_path, capsys):
    src = make_hotpot(6, seed=4)
    src[3]["supporting_facts"] = [["Nowhere", 0]]
    inp, out = tmp_path / "in.json", tmp_path / "out.json"
    inp.write_text(json.dumps(src))
    assert cli(["convert-hotpot", str(inp), str(out), "--skip-invalid"]) == 0
    assert len(json.loads(out.read_text())) == 5
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["skipped"] == 1


def test_bad_files(tmp_path, capsys):
    out = tmp_path / "out.json"
    assert cli(["convert-hotpot", str(tmp_path / "missing.json"), str(out)]) == 2
    assert "missing.json: no such file" in capsys.readouterr().err
    broken = tmp_path / "broken.json"
    broken.write_text('[{"_id": "a",\n  "question": }]')
    assert cli(["convert-hotpot", str(broken), str(out)]) == 2
    assert "broken.json: malformed JSON at line 2" in capsys.readouterr().err
    lines = tmp_path / "broken.jsonl"
    lines.write_text(json.dumps(make_hotpot(1)[0]) + "\n{nope\n")
    assert cli(["convert-hotpot", str(lines), str(out)]) == 2
    assert "broken.jsonl: malformed JSON on line 2 (record 1)" in capsys.readouterr().err
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    assert cli(["convert-hotpot", str(empty), str(out)]) == 2
    assert "no records to write" in capsys.readouterr().err
    assert not out.exists()


def test_existing_output_untouched_on_failure(tmp_path):
    out = tmp_path / "out.json"
    out.write_text("previous")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"question": "q?"}]))
    assert cli(["convert-hotpot", str(bad), str(out)]) == 2
    assert out.read_text() == "previous"


def test_record_error_type():
    with pytest.raises(RecordError) as e:
        convert_record([], "f.json", 7)
    assert (e.value.source, e.value.index, e.value.field) == ("f.json", 7, "<record>")


@pytest.mark.skipif(not REAL_DEV.exists(), reason="shared HotpotQA dev sample not present")
def test_real_hotpot_dev_sample_as_module(tmp_path):
    out = tmp_path / "hotpot_qa.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "qa_train", "convert-hotpot", str(REAL_DEV), str(out)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(x) for x in out.read_text().splitlines()]
    _check_against_source(records, json.loads(REAL_DEV.read_text()), out)
    assert json.loads(proc.stdout.strip().splitlines()[-1])["records"] == len(records) == 500
