"""The batched agent loop against a scripted, deterministic backend (no model needed)."""

from __future__ import annotations

import json
import re

import pytest

from qa_train.data.prompt import BOF, EOF, EOT, FunctionCall, Message, render
from qa_train.inference.agent import AgentStats, run_agent
from qa_train.inference.parsing import MalformedCallError, parse_final_answer, parse_generation


class ScriptedBackend:
    """Reads the question and the number of retrieved contexts from the prompt; answers accordingly.

    Question ``"<name> needs K"``: K retrieve calls, then a summary answer (or a plain one when K <= 1).
    ``"loop …"`` calls forever, ``"broken …"`` emits an unparseable call on its second hop.
    """

    def __init__(self) -> None:
        self.calls: list[int] = []

    def _one(self, prompt: str) -> str:
        assert prompt.endswith("assistant:"), "prompt must end with the generation prompt"
        question = re.search(r"\nuser: (.*?)" + re.escape(EOT), prompt).group(1)
        done = prompt.count("retrieved context: ")
        name = question.split()[0]
        if question.startswith("broken") and done == 1:
            return f' {BOF}retrieve:\n{{"query": oops{EOF}'
        need = 10**9 if question.startswith("loop") else int(question.split()[-1])
        if done < need:
            thought = f"step {done} done\n" if done else ""
            return f" {thought}{BOF}retrieve:\n{json.dumps({'query': f'{name} part {done}'})}{EOF}"
        if need <= 1:
            return f" The answer is {name}-final.\nAnswer: {name}-final"
        return f" last sub answer\nSummary: combined {done} facts\nAnswer: {name}-final"

    def generate(self, prompts: list[str]) -> list[str]:
        self.calls.append(len(prompts))
        return [self._one(p) for p in prompts]


def retriever_for(name: str):
    return lambda query: f"context for [{query}]\nline two"


QUESTIONS = [
    "alpha needs 0",
    "beta needs 1",
    "gamma needs 2",
    "delta needs 3",
    "broken needs 3",
    "eps needs 1",
]


def run(questions, batch_size=32, max_hops=5, backend=None, stats=None):
    backend = backend or ScriptedBackend()
    retrievers = [retriever_for(q.split()[0]) for q in questions]
    return run_agent(questions, retrievers, backend, batch_size=batch_size, max_hops=max_hops, stats=stats)


def test_hops_and_multi_hop_detection() -> None:
    results = {r.question.split()[0]: r for r in run(QUESTIONS)}
    assert [results[n].hops for n in ("alpha", "beta", "gamma", "delta", "eps")] == [0, 1, 2, 3, 1]
    assert [results[n].multi_hop for n in ("alpha", "beta", "gamma", "delta")] == [False, False, True, True]
    assert (
        results["beta"].prediction == "The answer is beta-final.\nAnswer: beta-final"
    )  # no summary: whole text
    assert results["delta"].prediction == "delta-final"  # parsed from Summary/Answer
    assert results["delta"].answer_text.startswith("last sub answer\nSummary: combined 3 facts")
    roles = [m.role for m in results["gamma"].messages]
    assert roles == ["user", "assistant", "function", "assistant", "function", "assistant"]
    assert results["gamma"].messages[3].content == "step 1 done"
    assert results["gamma"].messages[2].content == "context for [gamma part 0] line two"  # newlines flattened
    assert all(r.error is None for n, r in results.items() if n != "broken")


def test_malformed_call_is_an_error_for_that_question_only() -> None:
    results = {r.question.split()[0]: r for r in run(QUESTIONS)}
    broken = results["broken"]
    assert broken.finished and broken.hops == 1 and broken.prediction == ""
    assert "malformed function call" in broken.error
    assert broken.messages[-1].content.startswith(f" {BOF}retrieve")
    assert results["delta"].prediction == "delta-final"


def test_max_hops_cut_off() -> None:
    stats = AgentStats()
    (res,) = run(["loop forever"], max_hops=3, stats=stats)
    assert res.hops == 3 and res.finished and "max_hops (3)" in res.error
    assert stats.generations == 4  # three calls executed, the fourth refused
    (zero,) = run(["loop forever"], max_hops=0)
    assert zero.hops == 0 and "max_hops (0)" in zero.error
    (ok,) = run(["gamma needs 2"], max_hops=2)
    assert ok.error is None and ok.hops == 2


def test_batch_size_invariance_and_one_batch_per_round() -> None:
    questions = [f"q{i} needs {i % 4}" for i in range(40)] + ["broken needs 2", "loop x"]
    one = run(questions, batch_size=1)
    backend = ScriptedBackend()
    stats = AgentStats()
    many = run(questions, batch_size=32, backend=backend, stats=stats)
    assert [r.to_dict() for r in one] == [r.to_dict() for r in many]
    # round 1: 42 active -> 32 + 10; each later round sends all its unfinished questions in <= 32-prompt calls
    assert backend.calls[:2] == [32, 10]
    assert max(backend.calls) <= 32
    assert stats.rounds == 6  # loop question: 5 hops + the refused 6th call
    assert (
        sum(backend.calls) == stats.generations == sum(r.hops for r in many) + len(questions)
    )  # one more turn than hops each


def test_retriever_failure_is_contained() -> None:
    def bad(query: str) -> str:
        raise KeyError(query)

    results = run_agent(["a needs 1", "b needs 1"], [bad, retriever_for("b")], ScriptedBackend())
    assert "retrieval failed" in results[0].error and results[0].hops == 0
    assert results[1].error is None and results[1].hops == 1


def test_backend_output_count_checked() -> None:
    class Short:
        def generate(self, prompts):
            return prompts[:-1]

    with pytest.raises(RuntimeError, match="1 outputs for 2 prompts"):
        run_agent(["a", "b"], [retriever_for("a")] * 2, Short())


def test_prompt_matches_training_format() -> None:
    backend = ScriptedBackend()
    seen: list[str] = []
    orig = backend.generate
    backend.generate = lambda prompts: seen.extend(prompts) or orig(prompts)
    (res,) = run(["gamma needs 1"], backend=backend)
    expected = render(res.messages[:3], add_generation_prompt=True).text
    assert seen[-1] == expected


@pytest.mark.parametrize(
    ("text", "content", "query"),
    [
        (f'{BOF}retrieve:\n{{"query": "who"}}{EOF}', None, "who"),
        (f' thought here\n{BOF}retrieve:\n{{"query": "wh\\u00e9re"}}{EOF}{EOT}', "thought here", "whére"),
        (f'{BOF} retrieve :\n  {{"query": "x"}} {EOF}', None, "x"),
    ],
)
def test_parse_function_call(text: str, content: str | None, query: str) -> None:
    msg = parse_generation(text)
    assert msg.role == "assistant" and msg.content == content
    assert msg.function_call.query() == query


def test_parse_roundtrip_with_renderer() -> None:
    msg = Message("assistant", "first answer", FunctionCall.retrieve("next question"))
    body = render([Message("user", "q"), msg]).text.split("assistant:")[1].split(EOT)[0]
    assert parse_generation(body) == msg


@pytest.mark.parametrize(
    "text",
    [
        f'{BOF}retrieve:\n{{"query": "x"}}',  # never closed
        f'{BOF}search:\n{{"query": "x"}}{EOF}',  # unknown function
        f"{BOF}retrieve:\nnot json{EOF}",
        f'{BOF}retrieve:\n{{"q": "x"}}{EOF}',
        f'{BOF}{{"query": "x"}}{EOF}',  # no name
        f"stray {EOF}",
    ],
)
def test_parse_malformed(text: str) -> None:
    with pytest.raises(MalformedCallError):
        parse_generation(text)


def test_parse_final_answer() -> None:
    assert parse_final_answer("born 1950\nSummary: a and b\nAnswer: Paris") == (
        "born 1950",
        "a and b",
        "Paris",
    )
    assert parse_final_answer("Summary: s\nAnswer: multi\nline") == (None, "s", "multi\nline")
    assert parse_final_answer("He was born in 1950.\nAnswer: 1950") == (
        None,
        None,
        "He was born in 1950.\nAnswer: 1950",
    )
    assert parse_final_answer(f"plain{EOT}junk") == (None, None, "plain")
