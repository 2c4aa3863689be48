"""The launcher's command line: one Fire object (``Launcher``) made of one class per command group.

``submit`` / ``offers`` / ``resume`` (``cli/submit.py``), ``status`` / ``watch`` / ``logs`` / ``cancel`` /
``list`` (``cli/jobs.py``), ``push`` / ``check_image`` (``cli/images.py``), ``upload-data`` (``cli/data.py``);
``cli/args.py`` checks the command line against the chosen command's signature before Fire runs it. Started as
``qa-launch``, ``python -m launch`` or ``python launch/submit.py``. Import-light on purpose: ``--dry_run``
renders and prints without touching a cloud, Docker or torch.
"""

from __future__ import annotations

import logging
import os
import sys

from launch.backends.base import CloudError
from launch.cli import args as cli_args
from launch.cli.common import CliError
from launch.cli.data import DataCommands
from launch.cli.export import ExportCommands
from launch.cli.images import ImageCommands
from launch.cli.jobs import JobCommands
from launch.cli.submit import SubmitCommands
from launch.credentials import SecretError, check_environment, install_log_redaction, redact
from launch.jobs.state import RegistryError
from launch.render import PlanError
from qa_train.logs import setup_logging
from qa_train.spec import SpecError

logger = logging.getLogger("launch")
COMMANDS = (
    "submit",
    "offers",
    "status",
    "watch",
    "logs",
    "cancel",
    "list",
    "resume",
    "push",
    "check_image",
    "upload-data",
    "export",
)


class Launcher(SubmitCommands, JobCommands, ImageCommands, DataCommands, ExportCommands):
    """Render job specs per GPU and run them on local Docker, vast.ai or RunPod."""


def main(argv: list[str] | None = None) -> int:
    """Exit 0 on success, 2 for bad input (unknown flag or command, bad value, spec, plan or secret: nothing
    was rendered, recorded or rented), 1 for a runtime failure (backend, API, registry); one ``error:`` line."""
    from pydantic import ValidationError

    argv = list(sys.argv[1:] if argv is None else argv)
    level = os.environ.get("QA_LOG_LEVEL", "WARNING").upper()
    setup_logging(level, "%(levelname)s %(name)s: %(message)s", None, defer_to_host=False)
    install_log_redaction()  # every secret value the launcher sees is redacted from every log line
    runs_dir = os.environ.get("QA_RUNS_ROOT", "runs")
    import fire

    try:
        check_environment()  # a key with a newline is refused by name before any command runs
        from launch.cli.common import prog

        command = cli_args.parse(Launcher, argv, COMMANDS, default="submit", prog=prog(),
                                 **cli_args.launcher_rules())  # fmt: skip
        launcher = Launcher(runs_dir)
        fire.Fire(launcher, command=command, name="qa-launch" if prog() == "qa-launch" else "submit.py")
    except (cli_args.UsageError, SpecError, PlanError, SecretError) as e:
        print(f"error: {redact(str(e))}", file=sys.stderr)
        return 2
    except ValidationError as e:  # a rendered spec built from a flag (e.g. --image) that the spec refuses
        from qa_train.spec import format_validation_error

        print(f"error: {format_validation_error(e, 'command line')}", file=sys.stderr)
        return 2
    except (CliError, RegistryError, CloudError) as e:
        print(f"error: {redact(str(e))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except SystemExit as e:  # fire's own usage errors (after the checks above, only help output)
        return int(e.code or 0) if not isinstance(e.code, str) else 2
    return launcher._exit_code


__all__ = ["COMMANDS", "Launcher", "main"]
