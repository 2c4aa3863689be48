"""Per-question retrieval over a HotpotQA record's own context paragraphs (as the original evaluation).

``bm25`` needs nothing but ``rank-bm25`` and works offline; ``e5`` reproduces the original's dense retriever
(``intfloat/e5-base-v2`` with the ``query:`` / ``passage:`` prefixes) when the model is available locally.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from typing import Any

logger = logging.getLogger(__name__)

RETRIEVERS = ("bm25", "e5")
DEFAULT_E5_MODEL = "intfloat/e5-base-v2"
_WORD = re.compile(r"\w+", re.UNICODE)


class RetrieverUnavailable(RuntimeError):
    """The requested retriever cannot run here (missing package or model)."""


PARAGRAPH_STYLES = ("title_first", "original")


def create_paragraph(title: str, sentences: Sequence[str], style: str = "title_first") -> str:
    """Paragraph text of one HotpotQA context entry.

    ``title_first`` (default): ``"Title. sentence sentence"`` — the shape of the training paragraphs (QA Expert
    data and ``convert-hotpot``), so the model sees at evaluation what it saw in training. ``original``: the
    original eval script's ``". ".join(sentences + [title])`` (sentences first, doubled periods), for comparison.
    """
    if style == "title_first":
        return f"{title}. {' '.join(''.join(sentences).split())}".strip()
    if style == "original":
        return ". ".join([*sentences, title])
    raise ValueError(f"paragraph style must be one of {', '.join(PARAGRAPH_STYLES)}, got {style!r}")


def paragraphs_from_context(context: Sequence[Sequence[Any]], style: str = "title_first") -> list[str]:
    """HotpotQA ``context`` (``[[title, [sentence, …]], …]``) → paragraph texts."""
    return [create_paragraph(str(title), [str(s) for s in sents], style) for title, sents in context]


def _tokens(text: str) -> list[str]:
    return _WORD.findall(text.lower())


class BM25Retriever:
    """Okapi BM25 over one question's paragraphs; ties keep the paragraph order."""

    def __init__(self, paragraphs: Sequence[str], num_paragraphs: int = 1) -> None:
        from rank_bm25 import BM25Okapi

        if not paragraphs:
            raise ValueError("no paragraphs to retrieve from")
        self.paragraphs = list(paragraphs)
        self.num_paragraphs = num_paragraphs
        # rank_bm25 divides by the mean document length: keep an empty paragraph from making it zero
        self._bm25 = BM25Okapi([_tokens(p) or [""] for p in self.paragraphs])

    def __call__(self, query: str) -> str:
        scores = self._bm25.get_scores(_tokens(query))
        order = sorted(range(len(self.paragraphs)), key=lambda i: (-scores[i], i))
        return " ".join(self.paragraphs[i] for i in order[: self.num_paragraphs])


class E5Encoder:
    """One sentence-transformers model shared by all questions' retrievers."""

    def __init__(self, model_name: str = DEFAULT_E5_MODEL, device: str | None = None) -> None:
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise RetrieverUnavailable(
                "--retriever e5 needs the sentence-transformers package "
                "(pip install 'qa-expert-trainer[eval]'); use --retriever bm25 to run offline"
            ) from exc
        try:
            self.model = SentenceTransformer(model_name, device=device, local_files_only=True)
        except Exception as exc:
            raise RetrieverUnavailable(
                f"--retriever e5: cannot load {model_name!r} from local files ({type(exc).__name__}: {exc}); "
                "download it into the Hugging Face cache or pass --e5_model PATH"
            ) from exc

    def encode(self, texts: list[str]) -> Any:
        return self.model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)


class E5Retriever:
    """Cosine similarity of e5 embeddings (normalized, so a dot product)."""

    def __init__(self, encoder: E5Encoder, paragraphs: Sequence[str], num_paragraphs: int = 1) -> None:
        if not paragraphs:
            raise ValueError("no paragraphs to retrieve from")
        self.encoder = encoder
        self.paragraphs = list(paragraphs)
        self.num_paragraphs = num_paragraphs
        self._vectors = encoder.encode([f"passage: {p}" for p in self.paragraphs])

    def __call__(self, query: str) -> str:
        q = self.encoder.encode([f"query: {query}"])[0]
        scores = self._vectors @ q
        order = sorted(range(len(self.paragraphs)), key=lambda i: (-float(scores[i]), i))
        return " ".join(self.paragraphs[i] for i in order[: self.num_paragraphs])


def make_retriever_factory(
    kind: str = "bm25", num_paragraphs: int = 1, e5_model: str = DEFAULT_E5_MODEL
) -> Callable[[Sequence[str]], Callable[[str], str]]:
    """Returns ``paragraphs -> retriever``; heavy models are loaded once, here, so failures come early."""
    if num_paragraphs < 1:
        raise ValueError(f"--num_paragraphs must be >= 1, got {num_paragraphs}")
    if kind == "bm25":
        return lambda paragraphs: BM25Retriever(paragraphs, num_paragraphs)
    if kind == "e5":
        encoder = E5Encoder(e5_model)
        return lambda paragraphs: E5Retriever(encoder, paragraphs, num_paragraphs)
    raise ValueError(f"--retriever must be one of {', '.join(RETRIEVERS)}, got {kind!r}")
