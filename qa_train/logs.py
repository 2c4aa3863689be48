"""Console logging for every entry point (container stages and the launcher).

Why not ``logging.basicConfig``: an entry point's ``main`` runs many times in one process (tests, embedding).
``basicConfig`` binds its handler to the stream of the first call, and transformers binds its own handler to
``sys.stderr`` at import; once that stream is closed (a test's captured stderr), every later log line becomes
'--- Logging error ---' on the console. Here the handler looks the stream up at emit time, a second call
replaces the first's handler instead of stacking one more, and transformers' records go through it too.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal

STAGE_FORMAT = "%(asctime)s - %(levelname)s - %(name)s - %(message)s"
STAGE_DATEFMT = "%m/%d/%Y %H:%M:%S"
SHORT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class CurrentStream(logging.StreamHandler):
    """A StreamHandler whose stream is ``sys.stdout`` / ``sys.stderr`` as they are when a record is emitted."""

    def __init__(self, which: Literal["stdout", "stderr"] = "stderr") -> None:
        self.which = which
        super().__init__()

    @property  # type: ignore[override]
    def stream(self):  # noqa: ANN201
        return getattr(sys, self.which)

    @stream.setter
    def stream(self, _value) -> None:  # noqa: ANN001
        pass


def setup_logging(
    level: int | str = logging.INFO,
    fmt: str = STAGE_FORMAT,
    datefmt: str | None = STAGE_DATEFMT,
    which: Literal["stdout", "stderr"] = "stderr",
    defer_to_host: bool = True,
) -> None:
    """One console handler on the root logger; other handlers (pytest's) are left alone.

    ``defer_to_host``: when the embedding process already put its own handlers on the root logger, leave
    logging to it (``basicConfig``'s rule). The launcher says False: its warnings are its user interface.
    """
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, CurrentStream)]:
        root.removeHandler(old)
    if defer_to_host and root.handlers:
        return
    handler = CurrentStream(which)
    handler.setFormatter(logging.Formatter(fmt, datefmt))
    root.addHandler(handler)
    root.setLevel(level)


def route_transformers(level: int) -> None:
    """transformers logs at ``level`` through the root handler, not its own import-time stderr handler."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity(level)
    hf_logging.disable_default_handler()
    hf_logging.enable_propagation()
