"""The contract between the container and the launcher: where a run lives in object storage and the run report.

Why one package that both sides import (and the launcher imports nothing else of qa_train but the spec): the container writes these paths and the report, the launcher (controller, ``status``) reads
them; a folder name or a report field defined twice drifts. Standard library only (the launcher never imports
torch, boto3 is imported lazily by whoever talks to storage).

Layout of one run (``<target>`` is the job's ``sync.target``, e.g. ``s3://bucket/prefix``)::

    <target>/<run_name>/spec.json          rendered spec, uploaded by the launcher before renting
    <target>/<run_name>/checkpoint-<N>/    Trainer checkpoints (committed by their _manifest.json)
    <target>/<run_name>/final/             final model or adapter
    <target>/<run_name>/merged/            merged model (LoRA / QLoRA)
    <target>/<run_name>/eval/              predictions + summary
    <target>/<run_name>/tokenized/<key>/   tokenized training data (committed by its _manifest.json); a
                                           relaunch downloads it instead of re-tokenizing (never a checkpoint)
    <target>/<run_name>/report.json        the run report (below), rewritten whole at every change
    <target>/<run_name>/metrics.json       live training metrics (``RunMetrics``), rewritten every ~15 s
    <target>/<run_name>/report/            report.html + PNG plots (``python -m qa_train report``)
"""

from qa_train.contract.layout import *  # noqa: F403
from qa_train.contract.outcome import *  # noqa: F403
from qa_train.contract.report import *  # noqa: F403
from qa_train.contract.run_metrics import *  # noqa: F403
from qa_train.contract.train_summary import *  # noqa: F403
from qa_train.contract.uris import *  # noqa: F403
