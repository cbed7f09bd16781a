"""Evaluation tasks on local data, with MTEB's protocols and metrics: one module per task type.

Each task reads a standard file layout, counts (rather than crashes on) malformed rows and dangling
references, and scores any encoder through :class:`~embedsmith.evaluation.embed.EmbeddingCache`:

- :class:`RetrievalTask`: a BEIR folder; nDCG/MAP/MRR/recall/precision at 1, 3, 5, 10, 100 (main: nDCG@10).
- :class:`STSTask`: sentence pairs with gold scores; Spearman/Pearson of cosine, Manhattan, Euclidean.
- :class:`ClassificationTask`: text + label; MTEB's logistic regression protocol, plus kNN (main: accuracy).
- :class:`ClusteringTask`: text + label; MiniBatchKMeans with k = number of labels (main: V-measure).
- :class:`PairClassificationTask`: pairs + binary label; best accuracy/F1 and average precision (main: max AP).
- :class:`BitextTask`: two aligned files; nearest-neighbour accuracy and F1 both ways (main: F1).

:data:`TASKS` is the one registry: ``embedsmith eval``'s commands, help texts and table columns come from it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...errors import InvalidInputError
from ...io import read_labelled
from ..results import TaskResult
from ..stats import pearson, spearman
from .base import Embed, Task
from .bitext import BitextTask
from .classification import ClassificationTask, knn_predict, undersample
from .clustering import ClusteringTask
from .pair_classification import POSITIVE_LABELS, PairClassificationTask, best_accuracy, best_f1
from .retrieval import RetrievalTask
from .sts import STSTask

#: task type -> task class, in the order the CLI lists them
TASKS: dict[str, type[Task]] = {cls.task_type: cls for cls in (
    RetrievalTask, STSTask, ClassificationTask, ClusteringTask, PairClassificationTask, BitextTask)}
TASK_TYPES = tuple(TASKS)


def load_task(task_type: str, path: str | Path, path2: str | Path | None = None, *, split: str | None = None,
              text_column: str | None = None, label_column: str | None = None) -> Task:
    """Read a task of ``task_type`` (a key of :data:`TASKS`) from its file(s)."""
    cls = TASKS.get(task_type)
    if cls is None:
        raise InvalidInputError(f"unknown task {task_type!r}; expected one of {', '.join(TASKS)}")
    return cls.load(path, path2, split=split, text_column=text_column, label_column=label_column)


def evaluate(encoder: Any, task: Task, **kwargs: Any) -> TaskResult:
    """Score ``encoder`` on ``task`` (see :meth:`Task.evaluate` for the keyword arguments)."""
    return task.evaluate(encoder, **kwargs)


__all__ = [
    "POSITIVE_LABELS",
    "TASKS",
    "TASK_TYPES",
    "BitextTask",
    "ClassificationTask",
    "ClusteringTask",
    "Embed",
    "PairClassificationTask",
    "RetrievalTask",
    "STSTask",
    "Task",
    "best_accuracy",
    "best_f1",
    "evaluate",
    "knn_predict",
    "load_task",
    "pearson",
    "read_labelled",
    "spearman",
    "undersample",
]
