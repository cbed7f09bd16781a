"""Evaluation: ranking metrics with trec_eval's definitions, and tasks on local data."""

from .metrics import retrieval_scores
from .tasks import STSTask

__all__ = ["STSTask", "retrieval_scores"]
