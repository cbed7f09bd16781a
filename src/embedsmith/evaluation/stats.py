"""Statistics: rank correlations, and whether a difference between two systems on the same items is real.

:func:`paired_bootstrap` takes per-item scores of systems A and B on the same items (queries, pairs or
texts, in the same order) and returns a :class:`Comparison`:

- ``diff``: B - A of the metric (positive: B scores higher).
- ``ci_low``, ``ci_high``: the 95% percentile interval of B - A over ``resamples`` paired bootstrap
  resamples: ``rng = numpy.random.default_rng(seed)``, each resample draws ``n`` item indices with
  replacement (``rng.integers(0, n, size=(resamples, n))``, drawn in blocks of rows) and recomputes the
  metric for A and B on the same indices; ``numpy.percentile(diffs, [2.5, 97.5])``.
- ``p_value``: a paired permutation (sign-flip) test with the same generator, after the bootstrap: each
  permutation swaps A's and B's scores of each item with probability 1/2 (``rng.random((resamples, n)) <
  0.5``); ``p = (1 + #{|diff*| >= |diff|}) / (resamples + 1)``.
- ``verdict``: "B better" when the interval lies above zero, "A better" when below, otherwise (the
  interval spans zero, ends included) "no significant difference".

Mean metrics (nDCG@10 per query, accuracy per text) resample the per-item scores. Corpus-level metrics
(Spearman, V-measure, average precision, F1, a threshold's best accuracy) resample rows of item data (e.g.
``[similarity, gold]`` per pair) and recompute the metric on each resample: :func:`compare_metric` with a
statistic of :data:`STATISTICS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..errors import InvalidInputError, require

#: a batched statistic: rows of item data [r, n, ...] (r resamples of n items) -> the metric of each [r]
Statistic = Callable[[np.ndarray], np.ndarray]

RESAMPLES = 10_000
_BLOCK = 500  # resamples drawn and scored at a time (memory: _BLOCK x n item rows)


def _scipy_stats() -> Any:
    return require("scipy.stats", extra="eval", what="rank correlations")


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson's r; 0.0 when either side is constant (scipy would return nan)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return 0.0
    return float(_scipy_stats().pearsonr(x, y).statistic)


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho with average ranks for ties (scipy's); 0.0 when either side is constant."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return 0.0
    return float(_scipy_stats().spearmanr(x, y).statistic)


# --------------------------------------------------------------------------------- batched statistics


def _rowwise_pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    xc = x - x.mean(1, keepdims=True)
    yc = y - y.mean(1, keepdims=True)
    denom = np.sqrt((xc * xc).sum(1) * (yc * yc).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (xc * yc).sum(1) / np.where(denom > 0, denom, 1.0), 0.0)


def batch_mean(rows: np.ndarray) -> np.ndarray:
    """Mean of per-item scores: rows [r, n] -> [r]."""
    return np.asarray(rows, np.float64).mean(1)


def batch_pearson(rows: np.ndarray) -> np.ndarray:
    """Pearson of column 0 (system score) against column 1 (gold): rows [r, n, 2] -> [r]."""
    return _rowwise_pearson(rows[..., 0], rows[..., 1])


def batch_spearman(rows: np.ndarray) -> np.ndarray:
    """Spearman of column 0 (system score) against column 1 (gold), average ranks: [r, n, 2] -> [r]."""
    rank = _scipy_stats().rankdata
    return _rowwise_pearson(rank(rows[..., 0], axis=1), rank(rows[..., 1], axis=1))


def _entropy(counts: np.ndarray, total: np.ndarray) -> np.ndarray:
    p = counts / total[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0).sum(1)


def batch_v_measure(rows: np.ndarray) -> np.ndarray:
    """V-measure (beta 1, as scikit-learn's) of gold class ids (column 0) against cluster ids (column 1):
    rows [r, n, 2] of non-negative integers -> [r]."""
    gold, pred = rows[..., 0].astype(np.int64), rows[..., 1].astype(np.int64)
    r, n = gold.shape
    c, k = int(gold.max()) + 1, int(pred.max()) + 1
    flat = (np.arange(r)[:, None] * c * k + gold * k + pred).ravel()
    table = np.bincount(flat, minlength=r * c * k).reshape(r, c, k).astype(np.float64)
    total = np.full(r, float(n))
    h_c, h_k = _entropy(table.sum(2), total), _entropy(table.sum(1), total)
    with np.errstate(divide="ignore", invalid="ignore"):
        joint = table / n
        outer = table.sum(2, keepdims=True) * table.sum(1, keepdims=True) / (n * n)
        mi = np.where(table > 0, joint * np.log(np.where(table > 0, joint, 1.0) / np.where(outer > 0, outer, 1.0)),
                      0.0).sum((1, 2))
        homogeneity = np.where(h_c > 0, mi / np.where(h_c > 0, h_c, 1.0), 1.0)
        completeness = np.where(h_k > 0, mi / np.where(h_k > 0, h_k, 1.0), 1.0)
        s = homogeneity + completeness
        return np.where(s > 0, 2 * homogeneity * completeness / np.where(s > 0, s, 1.0), 0.0)


def _batch_ap(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Average precision as scikit-learn defines it (one step per distinct score): [r, n] each -> [r]."""
    order = np.argsort(-scores, axis=1, kind="stable")
    s = np.take_along_axis(scores, order, 1)
    y = np.take_along_axis(labels, order, 1).astype(np.float64)
    n = s.shape[1]
    tp = np.cumsum(y, 1)
    last = np.ones_like(s, dtype=bool)
    last[:, :-1] = s[:, :-1] != s[:, 1:]
    pos = np.arange(n)
    ends = np.minimum.accumulate(np.where(last, pos, n)[:, ::-1], axis=1)[:, ::-1]  # end of each tie group
    precision_at_end = np.take_along_axis(tp, ends, 1) / (ends + 1)
    total = y.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (y * precision_at_end).sum(1) / np.where(total > 0, total, 1.0), 0.0)


def batch_average_precision(rows: np.ndarray) -> np.ndarray:
    """Average precision of column 0 (higher = positive) against binary labels (last column): [r, n, 2]."""
    return _batch_ap(rows[..., 0], rows[..., -1])


def batch_max_average_precision(rows: np.ndarray) -> np.ndarray:
    """The best average precision over several score columns (all but the last, the label): [r, n, m+1]."""
    return np.max([_batch_ap(rows[..., j], rows[..., -1]) for j in range(rows.shape[-1] - 1)], axis=0)


def _class_f1(gold: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per resample and class: F1 (2TP / (2TP + FP + FN), 0 when undefined), true support, and whether the
    class occurs at all (in gold or predictions; scikit-learn's label set). Inputs [r, n] of class ids."""
    gold, pred = gold.astype(np.int64), pred.astype(np.int64)
    r = gold.shape[0]
    c = int(max(gold.max(), pred.max())) + 1
    base = np.arange(r)[:, None] * c
    support = np.bincount((base + gold).ravel(), minlength=r * c).reshape(r, c).astype(np.float64)
    predicted = np.bincount((base + pred).ravel(), minlength=r * c).reshape(r, c).astype(np.float64)
    tp = np.bincount((base + gold).ravel(), weights=(gold == pred).ravel().astype(np.float64),
                     minlength=r * c).reshape(r, c)
    denom = support + predicted  # = 2TP + FP + FN
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(denom > 0, 2 * tp / np.where(denom > 0, denom, 1.0), 0.0)
    return f1, support, denom > 0


def batch_macro_f1(rows: np.ndarray) -> np.ndarray:
    """Macro F1 (as scikit-learn's ``average="macro"``) of each prediction column (columns 1..) against the
    gold class ids (column 0), averaged over the prediction columns (e.g. MTEB's experiments): [r, n, 1+e]."""
    out = np.zeros(rows.shape[0])
    for j in range(1, rows.shape[-1]):
        f1, _, present = _class_f1(rows[..., 0], rows[..., j])
        out += (f1 * present).sum(1) / np.maximum(present.sum(1), 1)
    return out / max(rows.shape[-1] - 1, 1)


def batch_weighted_f1(rows: np.ndarray) -> np.ndarray:
    """Support-weighted F1 (scikit-learn's ``average="weighted"``) of predictions (column 1) against gold
    class ids (column 0): [r, n, 2] -> [r]."""
    f1, support, _ = _class_f1(rows[..., 0], rows[..., 1])
    return (f1 * support).sum(1) / np.maximum(support.sum(1), 1)


def _sweep(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MTEB's threshold sweep (higher score = positive): the best accuracy and the best F1 over thresholds
    between distinct scores, per resample: [r, n] each -> ([r], [r])."""
    order = np.argsort(-scores, axis=1, kind="stable")
    s = np.take_along_axis(scores, order, 1)
    y = np.take_along_axis(labels, order, 1).astype(np.float64)
    n = s.shape[1]
    tp = np.cumsum(y, 1)[:, :-1]  # positives among the first i + 1, for splits after i = 0..n-2
    seen = np.arange(1, n)[None, :]
    split = s[:, :-1] != s[:, 1:]  # a threshold fits only between distinct scores
    positives = y.sum(1, keepdims=True)
    negatives = n - positives
    accuracy = (tp + (negatives - (seen - tp))) / n
    with np.errstate(invalid="ignore", divide="ignore"):
        precision, recall = tp / seen, tp / np.where(positives > 0, positives, 1.0)
        f1 = np.where(tp > 0, 2 * precision * recall / np.where(tp > 0, precision + recall, 1.0), 0.0)
    return (np.where(split, accuracy, 0.0).max(1, initial=0.0), np.where(split & (tp > 0), f1, 0.0).max(1, initial=0.0))


def batch_best_accuracy(rows: np.ndarray) -> np.ndarray:
    """The best accuracy over thresholds (MTEB's sweep) and over score columns (all but the last, the 0/1
    label; higher = positive): [r, n, m+1] -> [r]."""
    return np.max([_sweep(rows[..., j], rows[..., -1])[0] for j in range(rows.shape[-1] - 1)], axis=0)


def batch_best_f1(rows: np.ndarray) -> np.ndarray:
    """The best F1 over thresholds (MTEB's sweep) and over score columns (all but the last, the 0/1 label):
    [r, n, m+1] -> [r]."""
    return np.max([_sweep(rows[..., j], rows[..., -1])[1] for j in range(rows.shape[-1] - 1)], axis=0)


#: statistics by name, as result side files name them
STATISTICS: dict[str, Statistic] = {
    "mean": batch_mean,
    "pearson": batch_pearson,
    "spearman": batch_spearman,
    "v_measure": batch_v_measure,
    "average_precision": batch_average_precision,
    "max_average_precision": batch_max_average_precision,
    "macro_f1": batch_macro_f1,
    "weighted_f1": batch_weighted_f1,
    "best_accuracy": batch_best_accuracy,
    "best_f1": batch_best_f1,
}


# ------------------------------------------------------------------------------------ weighted statistics
# A resample as item counts over a fixed pool of item rows: a bootstrap draw counts each item 0..n times, a
# permutation picks A's or B's row of each item from a pool of both. Rank statistics then rank the pool once
# and give each tie group the average rank of its copies, with no sort per resample (Spearman on 1,500 pairs
# took 20 s for 10,000 resamples when every resample was gathered and ranked).

WeightedStatistic = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _weighted_pearson(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Pearson of x and y ([m] or [r, m]) with item weights w [r, m] (a multiset); 0.0 when either is constant."""
    total = w.sum(1, keepdims=True)
    xc = x - (w * x).sum(1, keepdims=True) / total
    yc = y - (w * y).sum(1, keepdims=True) / total
    vx, vy = (w * xc * xc).sum(1), (w * yc * yc).sum(1)
    # A constant side leaves a variance of rounding noise (~1e-32 of its square sum), not 0: treat it as
    # constant (0.0, as spearman/pearson return); any real spread is far above 1e-24 of it.
    ok = (vx > 1e-24 * (w * x * x).sum(1)) & (vy > 1e-24 * (w * y * y).sum(1)) & (vx > 0) & (vy > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ok, (w * xc * yc).sum(1) / np.sqrt(np.where(ok, vx * vy, 1.0)), 0.0)


def weighted_ranks(values: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Average 1-based ranks of the pool ``values`` [m] within each weighted multiset ``w`` [r, m]: a tie group
    of total weight G after C smaller copies ranks C + (G + 1) / 2 (scipy's ``rankdata`` of the expanded
    multiset). Items of weight 0 get a rank that their weight then ignores."""
    order = np.argsort(values, kind="stable")
    v = values[order]
    starts = np.ones(len(v), bool)
    starts[1:] = v[1:] != v[:-1]
    group = np.cumsum(starts) - 1
    sizes = np.add.reduceat(w[:, order], np.flatnonzero(starts), axis=1)
    group_rank = np.cumsum(sizes, 1) - sizes + (sizes + 1) / 2
    ranks = np.empty(w.shape)
    ranks[:, order] = group_rank[:, group]
    return ranks


def weighted_mean(pool: np.ndarray, w: np.ndarray) -> np.ndarray:
    return np.asarray((w @ pool) / w.sum(1))


def weighted_pearson(pool: np.ndarray, w: np.ndarray) -> np.ndarray:
    return _weighted_pearson(pool[:, 0][None], pool[:, 1][None], w)


def weighted_spearman(pool: np.ndarray, w: np.ndarray) -> np.ndarray:
    return _weighted_pearson(weighted_ranks(pool[:, 0], w), weighted_ranks(pool[:, 1], w), w)


#: statistics that also take (pool rows [m, ...], item weights [r, m]); :func:`compare_metric` uses them
WEIGHTED: dict[str, WeightedStatistic] = {
    "mean": weighted_mean,
    "pearson": weighted_pearson,
    "spearman": weighted_spearman,
}


# --------------------------------------------------------------------------------------------- comparison

VERDICTS = ("A better", "B better", "no significant difference")


@dataclass(frozen=True)
class Comparison:
    """B against A on one metric: ``diff`` = B - A, its 95% interval, a permutation p-value and a verdict."""

    metric: str
    a: float
    b: float
    diff: float
    ci_low: float
    ci_high: float
    p_value: float
    verdict: str
    n: int
    resamples: int
    seed: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        """One line: metric, A -> B, difference with its interval, p-value and verdict."""
        return (f"{self.metric}: {self.a:.4f} -> {self.b:.4f}, B - A = {self.diff:+.4f} "
                f"[{self.ci_low:+.4f}, {self.ci_high:+.4f}], p = {self.p_value:.4f}: {self.verdict}")


def verdict(ci_low: float, ci_high: float) -> str:
    if ci_low > 0:
        return "B better"
    if ci_high < 0:
        return "A better"
    return "no significant difference"


def compare_metric(
    metric: str,
    a: Any,
    b: Any,
    *,
    statistic: str | Statistic = "mean",
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> Comparison:
    """Paired bootstrap interval and permutation p-value of B - A on one metric.

    Args:
        metric: the metric's name (reported as is).
        a, b: item data of systems A and B on the same items in the same order: per-item scores [n] for
            ``statistic="mean"``, or rows [n, ...] that ``statistic`` turns into the metric (e.g.
            ``[similarity, gold]`` per pair for ``"spearman"``).
        statistic: a name of :data:`STATISTICS` or a batched function (rows [r, n, ...] -> [r]).
        resamples: bootstrap resamples, and as many permutations.
        seed: seed of ``numpy.random.default_rng``.
    """
    stat = STATISTICS[statistic] if isinstance(statistic, str) else statistic
    if isinstance(statistic, str) and statistic not in STATISTICS:
        raise InvalidInputError(f"unknown statistic {statistic!r}; expected one of {', '.join(STATISTICS)}")
    xa, xb = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if xa.shape != xb.shape or xa.ndim == 0 or len(xa) < 2:
        raise InvalidInputError(f"A and B need item data of the same shape with at least 2 items, got "
                                f"{list(xa.shape)} and {list(xb.shape)}")
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 1:
        raise InvalidInputError(f"resamples must be a positive integer, got {resamples!r}")
    n = len(xa)
    value_a, value_b = float(stat(xa[None])[0]), float(stat(xb[None])[0])
    diff = value_b - value_a
    weighted = WEIGHTED.get(statistic) if isinstance(statistic, str) else None
    rng = np.random.default_rng(seed)
    boot = np.empty(resamples)
    for lo in range(0, resamples, _BLOCK):
        idx = rng.integers(0, n, size=(min(_BLOCK, resamples - lo), n))
        if weighted is not None:  # the same draw as item counts
            counts = np.bincount((np.arange(len(idx))[:, None] * n + idx).ravel(), minlength=len(idx) * n)
            w = counts.reshape(len(idx), n).astype(np.float64)
            boot[lo : lo + len(idx)] = weighted(xb, w) - weighted(xa, w)
        else:
            boot[lo : lo + len(idx)] = stat(xb[idx]) - stat(xa[idx])
    ci_low, ci_high = (float(v) for v in np.percentile(boot, [2.5, 97.5]))
    extreme = 0
    tol = 1e-12 * max(1.0, abs(diff))  # an identical difference must count despite rounding
    pool = np.concatenate([xa, xb]) if weighted is not None else None
    for lo in range(0, resamples, _BLOCK):
        swap = rng.random((min(_BLOCK, resamples - lo), n)) < 0.5
        if weighted is not None and pool is not None:  # A's or B's row of each item, from a pool of both
            keep, flip = (~swap).astype(np.float64), swap.astype(np.float64)
            perm = weighted(pool, np.concatenate([flip, keep], 1)) - weighted(pool, np.concatenate([keep, flip], 1))
        else:
            mask = swap.reshape(swap.shape + (1,) * (xa.ndim - 1))
            pa, pb = np.where(mask, xb[None], xa[None]), np.where(mask, xa[None], xb[None])
            perm = stat(pb) - stat(pa)
        extreme += int((np.abs(perm) >= abs(diff) - tol).sum())
    p_value = (1 + extreme) / (resamples + 1)
    return Comparison(metric, value_a, value_b, diff, ci_low, ci_high, p_value, verdict(ci_low, ci_high), n,
                      resamples, seed)


def paired_bootstrap(a: Any, b: Any, *, resamples: int = RESAMPLES, seed: int = 0,
                     metric: str = "score") -> Comparison:
    """B - A of the mean of per-item scores ``a`` and ``b`` [n] (e.g. nDCG@10 per query of a model before
    and after fine-tuning), with its paired-bootstrap 95% interval, permutation p-value and verdict."""
    return compare_metric(metric, a, b, statistic="mean", resamples=resamples, seed=seed)
