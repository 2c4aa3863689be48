"""``python -m launch``: the launcher's command line (also the ``qa-launch`` console script and
``python launch/submit.py``); the background controller of ``submit --detach`` is started this way."""

import sys

from launch.cli import main

if __name__ == "__main__":
    sys.exit(main())
