"""The container entrypoint, ``python -m qa_train run`` (its ``main`` is in :mod:`qa_train.entrypoint.cli`).

One concept per module: ``flags`` (spec → train flags), ``commands`` (launcher argv), ``stages`` (stages as
data), ``supervisor`` (child process groups, signal forwarding), ``reporter`` (the run report, restore),
``spec_input`` (loading the spec), ``localize`` (remote inputs), ``runner`` (stages in order), ``cli``.
Imports nothing heavy: stages do the work in subprocesses.
"""
