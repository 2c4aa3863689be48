"""Entry points run many times in one process: logging must follow the current stderr, never a closed one.

The measured failure: a test's captured stderr was closed, and a later in-process `qa_train train` call printed
92 lines of '--- Logging error ---' (transformers' import-time handler, basicConfig's first-call handler)
around its one ``error:`` line.
"""

from __future__ import annotations

import io
import logging
import sys

import pytest

from qa_train.logs import CurrentStream, route_transformers, setup_logging


@pytest.fixture(autouse=True)
def _restore_root_logger():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_second_setup_writes_to_the_new_stderr_and_the_old_one_may_be_closed(monkeypatch) -> None:
    from transformers.utils import logging as hf_logging

    first = io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    setup_logging(defer_to_host=False)
    route_transformers(logging.INFO)
    logging.getLogger("qa_train.example").info("one")
    assert "one" in first.getvalue()
    first.close()

    second = io.StringIO()
    monkeypatch.setattr(sys, "stderr", second)
    setup_logging(defer_to_host=False)
    logging.getLogger("qa_train.example").info("two")
    hf_logging.get_logger("transformers.example").info("from transformers")
    out = second.getvalue()
    assert "two" in out and "from transformers" in out, out
    assert "Logging error" not in out
    assert sum(isinstance(h, CurrentStream) for h in logging.getLogger().handlers) == 1, "handlers stacked"
    hf_logging.set_verbosity_warning()


def test_stdout_handler_follows_stdout(monkeypatch) -> None:
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    setup_logging(logging.INFO, which="stdout", defer_to_host=False)
    logging.getLogger("qa_train.example").info("to stdout")
    assert out.getvalue().rstrip().endswith("INFO - qa_train.example - to stdout"), out.getvalue()


def test_a_host_with_its_own_handlers_keeps_logging(monkeypatch) -> None:
    """Embedded (pytest, a notebook with logging set up): a stage's setup adds nothing of its own."""
    root = logging.getLogger()
    host = logging.StreamHandler(io.StringIO())
    monkeypatch.setattr(root, "handlers", [host])
    setup_logging()
    assert root.handlers == [host]
