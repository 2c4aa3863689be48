"""HotpotQA evaluation: metrics (as the original) and the ``python -m qa_train eval`` CLI."""
