"""Ranking metrics with trec_eval's definitions (as MTEB computes them through pytrec_eval).

- nDCG@k: gains are the graded judgements themselves (not 2^rel - 1), discount log2(rank + 1); the
  ideal ranking orders every judged document by grade.
- MAP@k: the sum of precision at each relevant hit within the top k, divided by all relevant documents.
- MRR@k: 1 / rank of the first relevant hit within the top k (0 when none).
- recall@k: relevant hits in the top k / all relevant documents. precision@k: relevant hits / k.

A document is relevant when its judgement is > 0. Runs are ranked lists of ids, best first; duplicates
after the first are ignored.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from ..errors import InvalidInputError

DEFAULT_KS = (1, 3, 5, 10, 100)


def _dedupe(ranked: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(ranked))


def ndcg_at_k(ranked: Sequence[str], qrel: Mapping[str, int], k: int) -> float:
    """nDCG@k of one ranked list against graded judgements."""
    ranked = _dedupe(ranked)[:k]
    dcg = sum(max(qrel.get(d, 0), 0) / math.log2(i + 2) for i, d in enumerate(ranked))
    ideal = sorted((g for g in qrel.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def average_precision_at_k(ranked: Sequence[str], qrel: Mapping[str, int], k: int) -> float:
    relevant = {d for d, g in qrel.items() if g > 0}
    if not relevant:
        return 0.0
    hits, total = 0, 0.0
    for i, d in enumerate(_dedupe(ranked)[:k], start=1):
        if d in relevant:
            hits += 1
            total += hits / i
    return total / len(relevant)


def reciprocal_rank_at_k(ranked: Sequence[str], qrel: Mapping[str, int], k: int) -> float:
    for i, d in enumerate(_dedupe(ranked)[:k], start=1):
        if qrel.get(d, 0) > 0:
            return 1.0 / i
    return 0.0


def recall_at_k(ranked: Sequence[str], qrel: Mapping[str, int], k: int) -> float:
    relevant = {d for d, g in qrel.items() if g > 0}
    if not relevant:
        return 0.0
    return len(relevant.intersection(_dedupe(ranked)[:k])) / len(relevant)


def precision_at_k(ranked: Sequence[str], qrel: Mapping[str, int], k: int) -> float:
    return sum(1 for d in _dedupe(ranked)[:k] if qrel.get(d, 0) > 0) / k


_METRICS = {
    "ndcg": ndcg_at_k,
    "map": average_precision_at_k,
    "mrr": reciprocal_rank_at_k,
    "recall": recall_at_k,
    "precision": precision_at_k,
}


def _check_ks(ks: Sequence[int]) -> None:
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
            raise InvalidInputError(f"cut-offs must be positive integers, got {k!r}")


def per_query_scores(
    qrels: Mapping[str, Mapping[str, int]],
    run: Mapping[str, Sequence[str]],
    ks: Sequence[int] = DEFAULT_KS,
) -> tuple[list[str], dict[str, list[float]]]:
    """Every metric at every k for each judged query (the items a significance test resamples).

    Returns:
        The judged query ids, and per metric (``"ndcg_at_10"``...) one score per query in that order.
    """
    _check_ks(ks)
    judged = [q for q, rel in qrels.items() if any(g > 0 for g in rel.values())]
    if not judged:
        raise InvalidInputError("qrels hold no query with a relevant document")
    return judged, {f"{name}_at_{k}": [fn(run.get(q, []), qrels[q], k) for q in judged]
                    for name, fn in _METRICS.items() for k in ks}


def retrieval_scores(
    qrels: Mapping[str, Mapping[str, int]],
    run: Mapping[str, Sequence[str]],
    ks: Sequence[int] = DEFAULT_KS,
) -> dict[str, float]:
    """Mean of every metric at every k over the judged queries (those with at least one relevant document).

    Args:
        qrels: query id -> {document id: grade}.
        run: query id -> ranked document ids, best first. A judged query missing from the run scores 0.
        ks: cut-offs.

    Returns:
        ``{"ndcg_at_10": ..., "map_at_10": ..., "mrr_at_10": ..., "recall_at_100": ..., ...}``.
    """
    judged, per = per_query_scores(qrels, run, ks)
    return {metric: sum(values) / len(judged) for metric, values in per.items()}
