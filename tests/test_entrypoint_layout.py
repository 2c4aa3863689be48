"""The container entrypoint stays a package of small parts (issue 21 item 3): no function over 60 lines, and
no stage command that carries code in a ``python -c`` string."""

from __future__ import annotations

import ast
import json
import subprocess
from pathlib import Path

from qa_train.entrypoint.stages import build_stages
from qa_train.spec import Plan, parse_job

PACKAGE = Path(__file__).resolve().parents[1] / "qa_train" / "entrypoint"
MAX_LINES = 60


def _long_functions(limit: int) -> list[str]:
    out = []
    for path in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = (node.end_lineno or node.lineno) - node.lineno + 1
                if n > limit:
                    out.append(f"{path.name}:{node.lineno} {node.name}() is {n} lines")
    return out


def test_no_function_in_the_entrypoint_package_is_over_60_lines() -> None:
    assert PACKAGE.is_dir() and len(list(PACKAGE.glob("*.py"))) > 5
    assert _long_functions(MAX_LINES) == []
    assert _long_functions(5), "the check must see the package's functions"


def _job(tmp_path: Path, **eval_extra: object) -> dict:
    return {
        "run_name": "layout",
        "output_root": str(tmp_path),
        "stages": ["train", "merge", "eval"],
        "model": {"make_tiny": {"arch": "llama"}},
        "use_lora": True,
        "data": {"train_path": "/data/t.json", "hotpot_qa_dev_path": "/data/h.json"},
        "eval": {"compare_base": True, "limit": 3, **eval_extra},
        "sync": {"target": "s3://bkt/runs"},
    }


def test_no_stage_command_runs_code_from_a_python_c_string(tmp_path: Path) -> None:
    job = parse_job(_job(tmp_path))
    stages = build_stages(job, Plan(launcher="python", num_gpus=0))
    assert [s.name for s in stages] == ["train", "merge", "eval"]
    argvs = [step.argv for s in stages for step in s.steps]
    assert len(argvs) >= 6  # tiny model, train, merge, push, base eval, eval, compare
    assert all("-c" not in argv for argv in argvs), argvs
    compare = stages[-1].steps[-1].argv
    assert compare[compare.index("qa_train") + 1] == "compare-eval"


def test_the_compare_step_is_a_real_subcommand(tmp_path: Path) -> None:
    """The eval stage's last step runs as built: ``python -m qa_train compare-eval BASE TUNED`` prints the
    before/after table from the two runs' summaries; a wrong argument count is exit 2 with a usage line."""
    base, tuned = tmp_path / "eval" / "base_predictions.jsonl", tmp_path / "eval" / "predictions.jsonl"
    base.parent.mkdir()
    for path, recall in ((base, 0.05), (tuned, 0.31)):
        summary = {"recall": recall, "num_errors": 0, "num_questions": 3}
        path.with_name(path.stem + ".summary.json").write_text(json.dumps(summary))
    job = parse_job(_job(tmp_path))
    argv = build_stages(job, Plan(launcher="python", num_gpus=0))[-1].steps[-1].argv
    assert argv[-2:] == [job.base_eval_save_path(), job.eval_save_path()]
    argv = [*argv[:-2], str(base), str(tuned)]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[2].split() == ["recall", "0.0500", "0.3100"]
    bad = subprocess.run([*argv[:-1]], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "usage: python -m qa_train compare-eval" in bad.stderr
