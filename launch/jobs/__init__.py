"""Jobs: what the launcher knows about a job and how it drives one to an end.

``state`` (job states, allowed transitions, the SQLite registry), ``recovery`` (the one policy: backoff, failed
machines, restarts, budget), ``lease`` (one controller per job), ``offers`` (the one offer walk) and
``controller`` (the loop: instance state + run report → decision → action). Nothing here imports torch, and of
``qa_train`` only the shared ``contract`` and ``spec`` modules.
"""
