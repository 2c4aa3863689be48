"""Following a log that a cloud only serves as a tail window (vast): print each new line exactly once."""

from __future__ import annotations


class TailFollower:
    """Remembers the last window and finds where the next window overlaps it.

    The overlap is the longest suffix of the previous window that is a prefix of the new one, so a log longer
    than the window still yields its new lines, and repeated identical lines are counted, not deduplicated.
    With no overlap at all the log moved on by more than a window (or restarted): every line is new, and
    ``gap`` says that lines may have been missed in between."""

    def __init__(self) -> None:
        self.last: list[str] = []
        self.gap = False

    def feed(self, window: list[str]) -> list[str]:
        prev = self.last
        k = _overlap(prev, window)
        self.gap = bool(prev) and k == 0 and bool(window)
        self.last = list(window)
        return window[k:]


def _overlap(prev: list[str], new: list[str]) -> int:
    """Largest k with prev[-k:] == new[:k] (KMP on new + sentinel + prev, linear time)."""
    if not prev or not new:
        return 0
    seq: list[object] = [*new, object(), *prev]
    fail = [0] * len(seq)
    for i in range(1, len(seq)):
        j = fail[i - 1]
        while j and seq[i] != seq[j]:
            j = fail[j - 1]
        if seq[i] == seq[j]:
            j += 1
        fail[i] = j
    return fail[-1]
