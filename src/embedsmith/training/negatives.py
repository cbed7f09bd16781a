"""Hard negatives: documents that score high for a query but are not among its positives.

BM25 (bm25s, Lucene-style with English stemming) or a dense encoder ranks the corpus for each query; the
top candidates that are not positives become negatives. A guard against false negatives (relevant but
unjudged documents) skips candidates that score too close to the query's own positive.

:func:`mine_hard_negatives` works on indices; :func:`add_hard_negatives` adds negatives to
:class:`~embedsmith.training.TrainingData` (never the document a pair was cut from, topped up with random
documents); :func:`load_dense_miner` loads the model that dense mining ranks with.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidInputError, require
from .data import TrainingData
from .models import load_bi_encoder, model_folder

METHODS = ("bm25", "dense")


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
    if method not in METHODS:
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


def load_dense_miner(model: str | Path, device: str = "auto") -> Any:
    """The encoder dense mining ranks with: ``model`` (an alias such as minilm, or a sentence-transformers
    folder) on torch, on ``device`` (auto | cpu | cuda)."""
    from ..encoders.registry import resolve_device

    return load_bi_encoder(model_folder(model), resolve_device(device))


def same_document(candidate: str, anchor: str, positives: Sequence[str]) -> bool:
    """True when the candidate holds the anchor or a positive verbatim, or a positive holds it."""
    c = " ".join(candidate.split())
    if " ".join(anchor.split()) in c:
        return True
    return any((q := " ".join(p.split())) in c or c in q for p in positives)


def random_documents(rng: random.Random, docs: Sequence[str], anchor: str, positives: Sequence[str],
                     taken: Sequence[str], n: int) -> list[str]:
    """Up to ``n`` random documents that are not a positive of ``anchor``, not in ``taken``, and not the
    document the anchor or a positive was cut from."""
    out: list[str] = []
    for _ in range(20 * n):
        if len(out) >= n:
            break
        cand = docs[rng.randrange(len(docs))]
        if cand not in positives and cand not in taken and cand not in out \
                and not same_document(cand, anchor, positives):
            out.append(cand)
    return out


def add_hard_negatives(data: TrainingData, *, method: str, per_query: int, corpus: Sequence[str] = (),
                       encoder: Any = None, skip_top: int = 0, margin: float | None = None,
                       seed: int = 42) -> TrainingData:
    """Mine ``per_query`` negatives for every anchor from its positives plus ``corpus``; rows that get
    fewer are topped up with random documents. Never a positive of that anchor, nor a document holding the
    anchor or a positive verbatim (the source of an inverse-cloze sentence or of a title). ``skip_top``
    and ``margin`` are :func:`mine_hard_negatives`' false-negative guards; dense mining needs ``encoder``
    (see :func:`load_dense_miner`)."""
    if per_query < 1:
        raise InvalidInputError(f"negatives per query must be >= 1, got {per_query}")
    docs = list(dict.fromkeys([*corpus, *data.positives]))
    index = {d: i for i, d in enumerate(docs)}
    groups: dict[str, set[int]] = {}
    for a, p in zip(data.anchors, data.positives, strict=True):
        groups.setdefault(a, set()).add(index[p])
    anchors = list(groups)
    # Mine more than needed: candidates that contain the anchor or a positive verbatim (the full document
    # an inverse-cloze sentence or a title was cut from) are the same document, not negatives.
    mined = mine_hard_negatives(anchors, docs, [sorted(groups[a]) for a in anchors], method=method,
                                k=per_query * 3 + 5, skip_top=skip_top, margin=margin, encoder=encoder)
    by_anchor = {}
    for a, cands in zip(anchors, mined, strict=True):
        own = [docs[i] for i in groups[a]]
        keep = [i for i in cands if not same_document(docs[i], a, own)]
        by_anchor[a] = keep[:per_query]
    rng = random.Random(seed)
    out = TrainingData(source=f"{data.source} + {method} negatives")
    for a, p in zip(data.anchors, data.positives, strict=True):
        negs = [docs[i] for i in by_anchor[a]]
        own = [docs[i] for i in groups[a]]  # top up with random documents that are not this one's
        negs += random_documents(rng, docs, a, own, negs, per_query - len(negs))
        out.add(a, p, negs[:per_query])
    return out
