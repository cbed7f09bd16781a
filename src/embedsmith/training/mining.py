"""Hard negatives: documents that score high for a query but are not among its positives.

BM25 (bm25s, Lucene-style with English stemming) or a dense encoder ranks the corpus for each query; the
top candidates that are not positives become negatives. A guard against false negatives (relevant but
unjudged documents) skips candidates that score too close to the query's own positive.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import InvalidInputError, require


def _bm25(queries: Sequence[str], corpus: Sequence[str], k: int,
          positives: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-k corpus indices and BM25 scores per query ([n, k] each; index -1 where fewer matched), and
    each query's best BM25 score among its positives [n]."""
    bm25s: Any = require("bm25s", extra="train", what="BM25 hard-negative mining")
    stemmer = None
    try:
        import Stemmer

        stemmer = Stemmer.Stemmer("english")
    except ImportError:
        pass
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(list(corpus), stopwords="en", stemmer=stemmer, show_progress=False),
                    show_progress=False)
    docs, scores = retriever.retrieve(
        bm25s.tokenize(list(queries), stopwords="en", stemmer=stemmer, show_progress=False),
        k=min(k, len(corpus)), show_progress=False, n_threads=1)
    words = bm25s.tokenize(list(queries), stopwords="en", stemmer=stemmer, show_progress=False, return_ids=False)
    best = np.array([float(retriever.get_scores(w)[list(pos)].max()) if w else 0.0
                     for w, pos in zip(words, positives, strict=True)], np.float32)
    return np.asarray(docs), np.asarray(scores, dtype=np.float32), best


def mine_hard_negatives(
    queries: Sequence[str],
    corpus: Sequence[str],
    positives: Sequence[Sequence[int]],
    *,
    method: str = "bm25",
    k: int = 10,
    skip_top: int = 0,
    exclude_positives: bool = True,
    margin: float | None = None,
    encoder: Any = None,
) -> list[list[int]]:
    """Hard negatives for each query, as corpus indices, best-scoring first.

    Args:
        queries: query texts.
        corpus: document texts.
        positives: per query, the corpus indices of its positives.
        method: 'bm25' or 'dense' (needs ``encoder``; cosine of query and document vectors).
        k: negatives per query (at most).
        skip_top: ignore this many top candidates first (they are the likeliest false negatives).
        exclude_positives: never return a positive (turning this off is for diagnostics only).
        margin: false-negative guard. Dense: skip candidates whose cosine exceeds the best positive's
            cosine minus ``margin`` (default 0.05). BM25: skip candidates scoring above ``(1 - margin)``
            times the best positive's BM25 score (default: no guard, since a relevant document often
            scores lower than unrelated ones that share its words; ``skip_top`` is the usual guard there).

    Returns:
        One list of corpus indices per query (possibly shorter than ``k``).
    """
    if method not in ("bm25", "dense"):
        raise InvalidInputError(f"unknown mining method {method!r}; expected 'bm25' or 'dense'")
    if len(positives) != len(queries):
        raise InvalidInputError(f"{len(queries)} queries but {len(positives)} positive lists")
    if not corpus:
        raise InvalidInputError("the corpus is empty")
    for i, pos in enumerate(positives):
        if not pos:
            raise InvalidInputError(f"query {i} ({queries[i][:40]!r}) has no positive")
        for d in pos:
            if not 0 <= d < len(corpus):
                raise InvalidInputError(f"query {i}: positive index {d} is outside the corpus of {len(corpus)}")
    if k < 1 or skip_top < 0:
        raise InvalidInputError(f"k must be positive and skip_top non-negative, got k={k}, skip_top={skip_top}")
    if margin is not None and not (math.isfinite(margin) and (0 <= margin < 1 if method == "bm25" else
                                                              -2 <= margin <= 2)):
        raise InvalidInputError(f"margin {margin!r} is out of range: BM25 takes 0 <= margin < 1 (a fraction of "
                                "the positive's score), dense -2..2 (a cosine difference)")
    depth = k + skip_top + max(len(p) for p in positives) + 20
    if method == "dense":
        if encoder is None:
            raise InvalidInputError("dense mining needs an encoder")
        qv = np.asarray(encoder.encode(list(queries), kind="query"), np.float32)
        dv = np.asarray(encoder.encode(list(corpus), kind="document"), np.float32)
        qv /= np.maximum(np.linalg.norm(qv, axis=1, keepdims=True), 1e-12)
        dv /= np.maximum(np.linalg.norm(dv, axis=1, keepdims=True), 1e-12)
        sims = qv @ dv.T
        top = np.argsort(-sims, axis=1, kind="stable")[:, : min(depth, len(corpus))]
        top_scores = np.take_along_axis(sims, top, axis=1)
        m = 0.05 if margin is None else margin
        limits = np.array([sims[i, list(p)].max() - m for i, p in enumerate(positives)])
    else:
        top, top_scores, best = _bm25(queries, corpus, depth, positives)
        limits = np.full(len(queries), np.inf) if margin is None else np.where(best > 0, best * (1 - margin), np.inf)
    out: list[list[int]] = []
    for i, pos in enumerate(positives):
        chosen: list[int] = []
        pos_set = set(pos)
        for rank, (d, s) in enumerate(zip(top[i].tolist(), top_scores[i].tolist(), strict=True)):
            if d < 0 or rank < skip_top:
                continue
            if (exclude_positives and d in pos_set) or s > limits[i]:
                continue
            chosen.append(int(d))
            if len(chosen) == k:
                break
        out.append(chosen)
    return out
