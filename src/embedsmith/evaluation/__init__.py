"""Evaluation: ranking metrics with trec_eval's definitions (tasks come in the evaluation issue)."""

from .metrics import retrieval_scores

__all__ = ["retrieval_scores"]
