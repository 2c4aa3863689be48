"""qa_train/contract is a leaf (issue 21): data only, standard library + pydantic, nothing else of the project.

Every import statement counts, also one inside a function (a lazy import is still a dependency: the launcher
and the container both import the contract, and a cycle or a torch import there reaches both).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONTRACT = REPO / "qa_train" / "contract"
ALLOWED_THIRD_PARTY = {"pydantic"}
KNOWN_EXCEPTIONS: set[str] = set()  # store.py moved into qa_train/storage (issue 21 item 2)


def foreign_imports(path: Path) -> list[str]:
    """``file:line module`` for each import of ``path`` that is neither the standard library, pydantic, nor
    the contract itself."""
    bad = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: only inside the package is possible, but say so plainly
                names = [] if node.level == 1 else [f"{'.' * node.level}{node.module or ''}"]
            else:
                names = [node.module or ""]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            if name == "qa_train.contract" or name.startswith("qa_train.contract."):
                continue
            if top in sys.stdlib_module_names or top in ALLOWED_THIRD_PARTY or top == "__future__":
                continue
            bad.append(f"{path.name}:{node.lineno} {name}")
    return bad


def test_contract_imports_only_stdlib_pydantic_and_itself():
    files = sorted(CONTRACT.glob("*.py"))
    assert len(files) >= 5
    bad = [b for f in files if f.name not in KNOWN_EXCEPTIONS for b in foreign_imports(f)]
    assert not bad, f"qa_train/contract must stay a leaf; foreign imports: {bad}"
    stale = [n for n in KNOWN_EXCEPTIONS if (CONTRACT / n).exists() and not foreign_imports(CONTRACT / n)]
    assert not stale, f"{stale} no longer import anything foreign: drop them from KNOWN_EXCEPTIONS"


def test_the_check_finds_a_foreign_import(tmp_path):
    """The check is real: a lazy torch import, a boto3 import and another project module are each found."""
    f = tmp_path / "x.py"
    f.write_text(
        "import json\nfrom qa_train.contract.layout import FINAL\n"
        "def f():\n    import torch\n    from qa_train.fsutil import atomic_write_text\n"
        "import boto3.session\nfrom .. import spec\n"
    )
    found = sorted(b.split(" ", 1)[1] for b in foreign_imports(f))
    assert found == ["..", "boto3.session", "qa_train.fsutil", "torch"]


def test_importing_the_contract_loads_no_heavy_or_project_module():
    code = (
        "import sys, qa_train.contract as c; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'boto3', 'botocore', 'transformers')"
        " or (m.startswith('qa_train.') and not m.startswith('qa_train.contract'))))"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]"


def test_exit_codes_map_to_failure_reasons():
    from qa_train.contract import ExitCode, FailureReason

    assert (ExitCode.SIGKILL, ExitCode.SIGTERM) == (137, 143)
    assert FailureReason.of_exit(2) == FailureReason.BAD_INPUT
    assert FailureReason.of_exit(3) == FailureReason.STORAGE_ERROR
    assert FailureReason.of_exit(143) == FailureReason.INSTANCE_KILLED
    assert FailureReason.of_exit(1) == FailureReason.of_exit(7) == FailureReason.TRAINING_ERROR
    assert FailureReason.INSTANCE_LOST.relaunchable and FailureReason.STORAGE_ERROR.relaunchable
    assert not FailureReason.TRAINING_ERROR.relaunchable and not FailureReason.BAD_INPUT.relaunchable


def test_train_summary_round_trip_and_refusals():
    import pytest

    from qa_train.contract import ReportError, TrainSummary

    s = TrainSummary(
        model="m", mode="lora", global_step=7, train_loss=1.5, resumed_from="s3://b/r/checkpoint-4"
    )
    doc = json.loads(s.to_json())
    doc["added_by_a_newer_trainer"] = 1
    assert TrainSummary.from_dict(doc) == s
    with pytest.raises(ReportError, match="x.json: mode must be"):
        TrainSummary.from_dict({"model": "m", "mode": "half"}, "x.json")
    with pytest.raises(ReportError, match="missing model"):
        TrainSummary.from_json('{"mode": "full"}')
