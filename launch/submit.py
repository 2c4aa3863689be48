"""``python launch/submit.py …``: the launcher's command line run from a checkout (``launch/cli/``; installed,
the same is ``qa-launch`` or ``python -m launch``)."""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, the repository root must be importable for `launch` and `qa_train`.
_REPO = Path(__file__).resolve().parent.parent
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

from launch.cli import COMMANDS, Launcher, main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())

__all__ = ["COMMANDS", "Launcher", "main"]
