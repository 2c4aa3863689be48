"""Metrics on hand-computed cases (the original's definitions)."""

from __future__ import annotations

import pytest

from qa_train.evaluate.metrics import compute_containing_acc, compute_recall, normalize_text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The Eiffel Tower!", "eiffel tower"),
        ("  a   cat,\tan owl;   the end. ", "cat owl end"),
        ("Theatre and another", "theatre and another"),  # articles only as whole words
        ("Café  Ünïcode—dash", "café ünïcode—dash"),  # non-ASCII punctuation is kept, as in the original
        ("", ""),
        ("...", ""),
        ("don't", "dont"),
    ],
)
def test_normalize(text: str, expected: str) -> None:
    assert normalize_text(text) == expected


@pytest.mark.parametrize(
    ("prediction", "truth", "expected"),
    [
        ("The answer is Paris.", "Paris", 1.0),
        ("Paris", "Paris, France", 0.5),  # 1 of 2 gold words
        ("france paris", "Paris, France", 1.0),  # word sets: order does not matter
        ("London", "Paris", 0.0),
        ("", "", 1.0),  # both empty
        ("the", "a", 1.0),  # both empty after normalization
        ("", "Paris", 0.0),
        ("Paris", "", 0.0),
        ("New York New York", "new york city", 2 / 3),
        ("Zürich", "zürich!", 1.0),
        ("São Paulo", "Sao Paulo", 0.5),  # accents are not folded
        ("paris", "paris paris", 0.5),  # the original divides by the number of gold words (with repeats)
    ],
)
def test_recall(prediction: str, truth: str, expected: float) -> None:
    assert compute_recall(prediction, truth) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("prediction", "truth", "expected"),
    [
        ("Summary: it was built in 1889 by Eiffel.", "1889", 1.0),
        ("The Eiffel Tower", "eiffel tower", 1.0),
        ("an eiffel, tower", "The Eiffel-Tower", 0.0),  # hyphen removed -> "eiffeltower"
        ("Paris", "Paris, France", 0.0),
        ("anything", "", 1.0),  # empty gold is contained everywhere
        ("", "x", 0.0),
        ("Ünïcode wins", "ünïcode", 1.0),
        ("parisian", "paris", 1.0),  # substring, not word match (as the original)
    ],
)
def test_containing(prediction: str, truth: str, expected: float) -> None:
    assert compute_containing_acc(prediction, truth) == expected
