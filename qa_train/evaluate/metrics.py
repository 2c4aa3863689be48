"""Answer metrics exactly as the original QA Expert evaluation, so numbers stay comparable with its report.

``compute_recall`` is word-set recall of the gold answer (not F1); ``compute_containing_acc`` asks whether the
normalized gold span appears inside the normalized (long-form) prediction.
"""

from __future__ import annotations

import re
import string

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = frozenset(string.punctuation)


def normalize_text(text: str) -> str:
    """Lowercase, drop ASCII punctuation, drop articles a/an/the, collapse whitespace (order as the original)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def compute_recall(prediction: str, truth: str) -> float:
    """|pred words ∩ gold words| / |gold words| over word sets; 1.0 if both are empty, 0.0 if only one is."""
    pred_tokens = normalize_text(prediction).split()
    truth_tokens = normalize_text(truth).split()
    if not pred_tokens or not truth_tokens:
        return float(pred_tokens == truth_tokens)
    common = set(pred_tokens) & set(truth_tokens)
    return len(common) / len(truth_tokens)


def compute_containing_acc(prediction: str, truth: str) -> float:
    """1.0 when the normalized gold answer is a substring of the normalized prediction, else 0.0."""
    return float(normalize_text(truth) in normalize_text(prediction))
