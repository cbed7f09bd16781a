"""Compare two evaluation results of the same data: per metric B - A, a 95% interval, p-value and verdict."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ResultMismatchError
from .results import TaskResult
from .stats import RESAMPLES, Comparison, compare_metric


def compare_results(a: TaskResult, b: TaskResult, *, resamples: int = RESAMPLES, seed: int = 0) -> list[Comparison]:
    """Every metric both results hold per-item data for, B against A (``diff`` = B - A).

    Raises:
        ResultMismatchError: the results are of different data (task, split, content digest or items), or
            one has no per-item data (its ``.items.json`` side file is missing).
    """
    if (a.task_type, a.task_name, a.split) != (b.task_type, b.task_name, b.split):
        raise ResultMismatchError(f"cannot compare {a.task_type} {a.task_name!r} ({a.split}) with {b.task_type} "
                                  f"{b.task_name!r} ({b.split}): not the same task")
    if a.dataset_revision != b.dataset_revision:
        raise ResultMismatchError(f"cannot compare results of different data: content digest "
                                  f"{a.dataset_revision} (A) vs {b.dataset_revision} (B)")
    if a.items is None or b.items is None:
        which = "A" if a.items is None else "B"
        raise ResultMismatchError(f"result {which} has no per-item scores (its .items.json side file is missing)")
    if a.items.ids != b.items.ids:
        raise ResultMismatchError(f"cannot compare: the results score different items "
                                  f"({len(a.items.ids)} vs {len(b.items.ids)})")
    out = []
    for metric, ma in a.items.metrics.items():
        mb = b.items.metrics.get(metric)
        if mb is None or mb.statistic != ma.statistic:
            continue
        if ma.statistic == "v_measure":  # cluster ids are arbitrary: only the gold column must agree
            if not np.array_equal(ma.rows[:, 0], mb.rows[:, 0]):
                raise ResultMismatchError("cannot compare: the results hold different gold labels")
        out.append(compare_metric(metric, ma.rows, mb.rows, statistic=ma.statistic, resamples=resamples,
                                  seed=seed))
    return out


def compare_files(a: str | Path, b: str | Path, *, resamples: int = RESAMPLES, seed: int = 0) -> list[Comparison]:
    """:func:`compare_results` of two result files written by :meth:`TaskResult.save`."""
    return compare_results(TaskResult.load(a), TaskResult.load(b), resamples=resamples, seed=seed)
