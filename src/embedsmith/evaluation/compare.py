"""Compare two evaluations of the same items: per metric B - A, a 95% interval, a p-value and a verdict.

:func:`compare_items` is the one comparison every report uses: ``eval compare`` (two result files),
fine-tuning (before/after), ``eval tradeoff`` (each setting against full float32) and ``eval pipeline``
(each mode against the first).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ResultMismatchError
from .results import ItemScores, TaskResult
from .stats import RESAMPLES, Comparison, compare_metric


def compare_items(a: ItemScores, b: ItemScores, *, metrics: Iterable[str] | None = None,
                  resamples: int = RESAMPLES, seed: int = 0) -> list[Comparison]:
    """B against A on every metric both hold item data for (or on ``metrics`` only, in that order).

    Raises:
        ResultMismatchError: A and B score different items, or hold different gold labels.
    """
    if a.ids != b.ids:
        raise ResultMismatchError(f"cannot compare: the results score different items "
                                  f"({len(a.ids)} vs {len(b.ids)})")
    out = []
    for metric in (a.metrics if metrics is None else metrics):
        ma, mb = a.metrics.get(metric), b.metrics.get(metric)
        if ma is None or mb is None or mb.statistic != ma.statistic:
            continue
        if ma.statistic == "v_measure":  # cluster ids are arbitrary: only the gold column must agree
            if not np.array_equal(ma.rows[:, 0], mb.rows[:, 0]):
                raise ResultMismatchError("cannot compare: the results hold different gold labels")
        out.append(compare_metric(metric, ma.rows, mb.rows, statistic=ma.statistic, resamples=resamples,
                                  seed=seed))
    return out


def compare_results(a: TaskResult, b: TaskResult, *, metrics: Iterable[str] | None = None,
                    resamples: int = RESAMPLES, seed: int = 0) -> list[Comparison]:
    """Every metric both results hold per-item data for (or ``metrics``), B against A (``diff`` = B - A).

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
    return compare_items(a.items, b.items, metrics=metrics, resamples=resamples, seed=seed)


def compare_files(a: str | Path, b: str | Path, *, resamples: int = RESAMPLES, seed: int = 0) -> list[Comparison]:
    """:func:`compare_results` of two result files written by :meth:`TaskResult.save`."""
    return compare_results(TaskResult.load(a), TaskResult.load(b), resamples=resamples, seed=seed)


def significance_dict(rows: Sequence[Comparison]) -> dict[str, dict[str, Any]]:
    """Per metric ``a``, ``b``, ``diff``, ``ci_low``, ``ci_high``, ``p_value`` and ``verdict``: the JSON every
    report gives."""
    return {c.metric: {"a": c.a, "b": c.b, "diff": c.diff, "ci_low": c.ci_low, "ci_high": c.ci_high,
                       "p_value": c.p_value, "verdict": c.verdict} for c in rows}
