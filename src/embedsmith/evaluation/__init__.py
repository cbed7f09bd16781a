"""Evaluation: MTEB-compatible tasks on local data, the dimension/precision trade-off, and pipelines."""

from .embed import EmbeddingCache
from .metrics import retrieval_scores
from .result_cache import ResultCache
from .results import TaskResult
from .tasks import (
    TASK_TYPES,
    TASKS,
    BitextTask,
    ClassificationTask,
    ClusteringTask,
    PairClassificationTask,
    RetrievalTask,
    STSTask,
    Task,
    evaluate,
    load_task,
)

__all__ = [
    "TASKS",
    "TASK_TYPES",
    "BitextTask",
    "ClassificationTask",
    "ClusteringTask",
    "EmbeddingCache",
    "PairClassificationTask",
    "ResultCache",
    "RetrievalTask",
    "STSTask",
    "Task",
    "TaskResult",
    "evaluate",
    "load_task",
    "retrieval_scores",
]
