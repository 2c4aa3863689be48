"""The batched multi-hop agent loop.

The original answers one question at a time, so a GPU sees batches of one. Here every unfinished question
advances one hop per round and a round's prompts go to the backend together (chunks of ``batch_size``), so
the backend batches across questions. With greedy decoding the answers do not depend on the batch size.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from qa_train.data.prompt import Message, render
from qa_train.inference.parsing import MalformedCallError, parse_final_answer, parse_generation

logger = logging.getLogger(__name__)

Retriever = Callable[[str], str]


class Backend(Protocol):
    """Greedy text generation; each output is the assistant turn up to (not including) ``<|eot|>``."""

    def generate(self, prompts: list[str]) -> list[str]: ...


@dataclass
class AgentResult:
    question: str
    messages: list[Message] = field(default_factory=list)
    prediction: str = ""  # final answer ("Answer:" part of a summary when present, else the whole answer)
    answer_text: str | None = None  # the full final assistant turn
    hops: int = 0  # retrieve calls executed
    error: str | None = None
    finished: bool = False

    @property
    def multi_hop(self) -> bool:
        return self.hops >= 2

    def to_dict(self) -> dict[str, Any]:
        return {
            "question": self.question,
            "prediction": self.prediction,
            "answer_text": self.answer_text,
            "hops": self.hops,
            "multi_hop": self.multi_hop,
            "error": self.error,
            "messages": [m.to_dict() for m in self.messages],
        }


@dataclass
class AgentStats:
    rounds: int = 0
    backend_calls: int = 0
    generations: int = 0
    batch_sizes: list[int] = field(default_factory=list)


def _step(result: AgentResult, output: str, retriever: Retriever, max_hops: int) -> None:
    """Apply one generated turn to one question's state."""
    try:
        msg = parse_generation(output)
    except MalformedCallError as exc:
        result.messages.append(Message("assistant", output))
        result.error = f"malformed function call: {exc}"
        result.finished = True
        return
    result.messages.append(msg)
    if msg.function_call is None:
        result.answer_text = msg.content or ""
        result.prediction = parse_final_answer(result.answer_text)[2]
        result.finished = True
        return
    if result.hops >= max_hops:
        result.error = f"max_hops ({max_hops}) reached without a final answer"
        result.finished = True
        return
    query = msg.function_call.query()
    try:
        context = retriever(query)
    except Exception as exc:  # one question's retrieval failure must not stop the others
        result.error = f"retrieval failed for query {query!r}: {type(exc).__name__}: {exc}"
        result.finished = True
        return
    result.hops += 1
    result.messages.append(Message("function", context.replace("\n", " ")))


def run_agent(
    questions: Sequence[str],
    retrievers: Sequence[Retriever],
    backend: Backend,
    batch_size: int = 32,
    max_hops: int = 5,
    on_finished: Callable[[int], None] | None = None,
    stats: AgentStats | None = None,
) -> list[AgentResult]:
    """Answer ``questions`` (``retrievers[i]`` serves question i); returns one result per question, in order.

    A question ends with a final answer, a malformed call, a retrieval error or ``max_hops`` retrieve calls
    followed by yet another call; generation per turn is bounded by the backend's ``max_new_tokens``, so the
    loop always terminates after at most ``max_hops + 1`` rounds.
    """
    if len(questions) != len(retrievers):
        raise ValueError(f"{len(questions)} questions but {len(retrievers)} retrievers")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_hops < 0:
        raise ValueError(f"max_hops must be >= 0, got {max_hops}")
    stats = stats if stats is not None else AgentStats()
    results = [AgentResult(q, [Message("user", q)]) for q in questions]
    while True:
        active = [i for i, r in enumerate(results) if not r.finished]
        if not active:
            return results
        stats.rounds += 1
        prompts = {i: render(results[i].messages, add_generation_prompt=True).text for i in active}
        active.sort(key=lambda i: len(prompts[i]))  # similar lengths share a batch: less padding
        for start in range(0, len(active), batch_size):
            chunk = active[start : start + batch_size]
            outputs = backend.generate([prompts[i] for i in chunk])
            if len(outputs) != len(chunk):
                raise RuntimeError(f"backend returned {len(outputs)} outputs for {len(chunk)} prompts")
            stats.backend_calls += 1
            stats.generations += len(chunk)
            stats.batch_sizes.append(len(chunk))
            for i, out in zip(chunk, outputs, strict=True):
                _step(results[i], out, retrievers[i], max_hops)
                if results[i].finished and on_finished is not None:
                    on_finished(1)
