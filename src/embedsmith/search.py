"""Fusing ranked lists: reciprocal rank fusion and weighted score fusion, and grouping hits by document.

Each function takes and returns plain ranked lists of ``(key, score)``, best first.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import TypeVar

from .errors import InvalidInputError

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")

RRF_K = 60


def reciprocal_rank_fusion(rankings: Sequence[Sequence[K]], *, k: int = RRF_K) -> list[tuple[K, float]]:
    """Score each key by the sum of ``1 / (k + rank)`` over the rankings it appears in (rank from 1).

    Cormack, Clarke and Buettcher (2009); ``k=60`` is their constant. Ties keep first-seen order.
    """
    if k <= 0:
        raise InvalidInputError(f"rrf k must be positive, got {k}")
    scores: dict[K, float] = {}
    for ranking in rankings:
        for rank, key in enumerate(ranking, start=1):
            scores[key] = scores.get(key, 0.0) + 1.0 / (k + rank)
    return sorted(scores.items(), key=lambda kv: -kv[1])


def _min_max(scored: Sequence[tuple[K, float]]) -> dict[K, float]:
    if not scored:
        return {}
    values = [s for _, s in scored]
    lo, hi = min(values), max(values)
    span = hi - lo
    return {key: (s - lo) / span if span > 0 else 1.0 for key, s in scored}


def weighted_fusion(
    dense: Sequence[tuple[K, float]], sparse: Sequence[tuple[K, float]], *, alpha: float = 0.5
) -> list[tuple[K, float]]:
    """``alpha * dense + (1 - alpha) * sparse`` after min-max scaling each list to [0, 1] (absent = 0)."""
    if not 0.0 <= alpha <= 1.0:
        raise InvalidInputError(f"alpha must be between 0 and 1, got {alpha}")
    d, s = _min_max(dense), _min_max(sparse)
    keys = list(dict.fromkeys([*d, *s]))
    fused = [(key, alpha * d.get(key, 0.0) + (1 - alpha) * s.get(key, 0.0)) for key in keys]
    return sorted(fused, key=lambda kv: -kv[1])


def best_per_group(items: Sequence[T], group: Callable[[T], Hashable]) -> list[T]:
    """Keep the first (best) item of each group, in order."""
    seen: set[Hashable] = set()
    out = []
    for item in items:
        g = group(item)
        if g not in seen:
            seen.add(g)
            out.append(item)
    return out
