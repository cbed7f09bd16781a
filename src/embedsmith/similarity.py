"""Vectorised similarity: pairwise matrices, top-k and analogies.

Each metric returns its natural value: cosine similarity, dot product, L2 (Euclidean) distance,
Manhattan (L1) distance. :func:`higher_is_closer` says which way to sort.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import InvalidInputError
from .types import Encoder, Metric, parse_enum

# Rows per block for Manhattan, which has no matrix-product form: bounds the [rows, m, dim] temporary.
_L1_BLOCK_BYTES = 64 * 1024 * 1024


def higher_is_closer(metric: str | Metric) -> bool:
    """True for similarities (cosine, dot), False for distances (l2, manhattan)."""
    return parse_enum(Metric, metric, "metric") in (Metric.COSINE, Metric.DOT)


def _as_matrix(x: np.ndarray | Sequence[Sequence[float]], name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float32)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2:
        raise InvalidInputError(f"{name} must be a vector or a [n, dim] matrix, got shape {a.shape}")
    return a


def pairwise(a: np.ndarray, b: np.ndarray | None = None, metric: str | Metric = "cosine") -> np.ndarray:
    """Score every row of ``a`` against every row of ``b``.

    Args:
        a: float array of shape [n, dim] (or [dim]).
        b: float array of shape [m, dim]; ``a`` itself when omitted.
        metric: cosine | dot | l2 | manhattan.

    Returns:
        float32 array of shape [n, m].
    """
    m = parse_enum(Metric, metric, "metric")
    x = _as_matrix(a, "a")
    y = x if b is None else _as_matrix(b, "b")
    if x.shape[1] != y.shape[1]:
        raise InvalidInputError(f"dimensions differ: a has {x.shape[1]}, b has {y.shape[1]}")
    if m is Metric.DOT:
        return x @ y.T
    if m is Metric.COSINE:
        xn = np.linalg.norm(x, axis=1, keepdims=True)
        yn = np.linalg.norm(y, axis=1, keepdims=True)
        return (x / np.where(xn == 0, 1, xn)) @ (y / np.where(yn == 0, 1, yn)).T
    if m is Metric.L2:
        # float64 keeps the cancellation in |x|^2 + |y|^2 - 2xy from turning 0 into ~1e-3.
        x64, y64 = x.astype(np.float64), y.astype(np.float64)
        sq = (x64 * x64).sum(1)[:, None] + (y64 * y64).sum(1)[None, :] - 2 * (x64 @ y64.T)
        return np.sqrt(np.maximum(sq, 0)).astype(np.float32)
    out = np.empty((x.shape[0], y.shape[0]), dtype=np.float32)
    rows = max(1, _L1_BLOCK_BYTES // max(1, 4 * y.shape[0] * y.shape[1]))
    for i in range(0, x.shape[0], rows):
        out[i : i + rows] = np.abs(x[i : i + rows, None, :] - y[None, :, :]).sum(-1)
    return out


@dataclass(frozen=True)
class TopK:
    """Best matches per query row.

    Attributes:
        indices: int64 array of shape [n_queries, k], best first.
        scores: float32 array of shape [n_queries, k], in the metric's natural unit.
    """

    indices: np.ndarray
    scores: np.ndarray


def top_k(
    queries: np.ndarray,
    candidates: np.ndarray,
    k: int = 10,
    *,
    metric: str | Metric = "cosine",
    exclude: Sequence[Sequence[int]] | None = None,
) -> TopK:
    """Exact k nearest candidates for each query.

    Args:
        queries: [n, dim] (or [dim]).
        candidates: [m, dim].
        k: matches per query; capped at the number of candidates.
        metric: cosine | dot | l2 | manhattan.
        exclude: per query, candidate indices never to return.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
        raise InvalidInputError(f"k must be a positive integer, got {k!r}")
    scores = pairwise(queries, candidates, metric)
    better_high = higher_is_closer(metric)
    keyed = -scores if better_high else scores.copy()
    if exclude is not None:
        if len(exclude) != keyed.shape[0]:
            raise InvalidInputError(f"exclude has {len(exclude)} rows, queries have {keyed.shape[0]}")
        for row, idx in enumerate(exclude):
            keyed[row, list(idx)] = np.inf
    available = keyed.shape[1] - (max((len(set(e)) for e in exclude), default=0) if exclude else 0)
    k = min(int(k), available)
    if k <= 0:
        empty = np.empty((keyed.shape[0], 0))
        return TopK(indices=empty.astype(np.int64), scores=empty.astype(np.float32))
    part = np.argpartition(keyed, k - 1, axis=1)[:, :k]
    order = np.take_along_axis(keyed, part, axis=1).argsort(axis=1, kind="stable")
    best = np.take_along_axis(part, order, axis=1).astype(np.int64)
    return TopK(indices=best, scores=np.take_along_axis(scores, best, axis=1))


def analogy(
    a: str | np.ndarray,
    b: str | np.ndarray,
    c: str | np.ndarray,
    candidates: Sequence[str] | np.ndarray,
    *,
    encoder: Encoder | None = None,
    k: int = 5,
) -> list[tuple[int, float]]:
    """Rank candidates by cosine to ``a - b + c`` (king - man + woman ~ queen).

    Args:
        a, b, c: words/texts (needs ``encoder``) or vectors of shape [dim].
        candidates: texts (needs ``encoder``) or a [m, dim] array.
        encoder: encodes any text arguments.
        k: how many to return.

    Returns:
        ``(candidate index, cosine)`` pairs, best first. Candidates equal to a, b or c (as texts,
        case-insensitively) are excluded.
    """
    texts = [x for x in (a, b, c) if isinstance(x, str)]
    if (texts or not isinstance(candidates, np.ndarray)) and encoder is None:
        raise InvalidInputError("analogy with text arguments needs an encoder")

    def vec(x: str | np.ndarray) -> np.ndarray:
        if isinstance(x, str):
            assert encoder is not None  # checked above
            return encoder.encode([x])[0]
        return np.asarray(x, np.float32).reshape(-1)

    target = vec(a) - vec(b) + vec(c)
    if isinstance(candidates, np.ndarray):
        cand = candidates
        skip: list[int] = []
    else:
        cand_texts = list(candidates)
        if not cand_texts:
            raise InvalidInputError("analogy needs at least one candidate")
        assert encoder is not None  # checked above
        cand = encoder.encode(cand_texts)
        inputs = {t.strip().lower() for t in texts}
        skip = [i for i, t in enumerate(cand_texts) if t.strip().lower() in inputs]
    res = top_k(target, cand, k, metric="cosine", exclude=[skip])
    return [(int(i), float(s)) for i, s in zip(res.indices[0], res.scores[0], strict=True)]
