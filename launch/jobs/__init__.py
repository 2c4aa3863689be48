"""Jobs: what the launcher knows about a job and how it drives one to an end.

``state`` (job states, allowed transitions, the SQLite registry), ``recovery`` (the one policy: backoff, failed
machines, restarts, budget; each decision with its ``FailureReason``), ``lease`` (one controller per job),
``offers`` (the one offer walk), ``controller`` (the loop: instance state + run report → decision → action),
``submission`` (the steps of submit / resume around them), ``plan``, ``status`` / ``watch`` and ``local_run``
(a local job's host folder). Nothing here imports torch, and of ``qa_train`` only the shared ``contract``,
``spec`` and ``storage`` modules.
"""
