"""Calibrated relevance: a monotone map from a search mode's scores to P(relevant), stored with the collection.

A cosine of 0.7 means "relevant" for one model and "unrelated" for another (e5's cosines sit above 0.7 for
unrelated pairs), and hybrid RRF scores sit near 0.03: raw scores cannot say "nothing relevant was found".
:func:`calibrate` searches judged queries (BEIR qrels), or without labels pseudo-queries cut from the
collection's own chunks (inverse cloze: a sentence of a chunk, whose own document is the relevant one),
labels each of the top ``depth`` hits, and fits scikit-learn's isotonic regression (monotone, no shape
assumed) from score to relevance. The fit is a list of breakpoints saved in the collection's notes under the
encoder fingerprint; a collection whose encoder changed ignores it. Search then reports ``relevance`` per hit
and ``min_relevance=`` drops weak ones.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import InvalidInputError

if TYPE_CHECKING:
    from .store.base import Collection

NOTE = "calibration"
_SENTENCE = re.compile(r"[^.!?\n]{40,300}[.!?]")


@dataclass(frozen=True)
class Calibration:
    """Breakpoints of a monotone map (score -> P(relevant)), linear between them, flat outside."""

    x: tuple[float, ...]
    y: tuple[float, ...]
    n: int
    source: str

    def __call__(self, scores: Sequence[float] | np.ndarray) -> np.ndarray:
        s = np.asarray(scores, dtype=np.float64)
        if not self.x:
            return np.zeros_like(s)
        return np.clip(np.interp(s, self.x, self.y), 0.0, 1.0)

    def to_json(self) -> dict[str, Any]:
        return {"x": list(self.x), "y": list(self.y), "n": self.n, "source": self.source}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Calibration:
        return cls(tuple(float(v) for v in data["x"]), tuple(float(v) for v in data["y"]), int(data.get("n", 0)),
                   str(data.get("source", "")))


def fit(scores: Sequence[float], labels: Sequence[int], source: str) -> Calibration:
    """Isotonic regression of labels (0/1) on scores, as breakpoints."""
    from .errors import require

    isotonic: Any = require("sklearn.isotonic", extra="eval", what="calibration")
    IsotonicRegression = isotonic.IsotonicRegression

    s, y = np.asarray(scores, np.float64), np.asarray(labels, np.float64)
    if len(s) < 10 or y.min() == y.max():
        raise InvalidInputError(f"calibration needs judged hits of both kinds, got {int(y.sum())} relevant of "
                                f"{len(y)}; give more queries (or judgements)")
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip").fit(s, y)
    return Calibration(tuple(map(float, iso.X_thresholds_)), tuple(map(float, iso.y_thresholds_)), len(s), source)


def expected_calibration_error(probs: Sequence[float] | np.ndarray, labels: Sequence[int], bins: int = 10) -> float:
    """ECE: the mean over equal-width probability bins of |mean label - mean probability|, weighted by size."""
    p, y = np.asarray(probs, np.float64), np.asarray(labels, np.float64)
    if not len(p):
        return 0.0
    idx = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            total += m.sum() * abs(float(y[m].mean()) - float(p[m].mean()))
    return total / len(p)


def mode_key(mode: str, reranked: bool) -> str:
    return f"{mode}+rerank" if reranked else mode


def _doc(hit_id: str, meta: Mapping[str, Any]) -> str:
    doc = meta.get("doc_id")
    return str(doc) if doc is not None else hit_id


def judged_hits(collection: Collection, queries: Mapping[str, str], qrels: Mapping[str, Mapping[str, int]], *,
                mode: str, depth: int, rerank: Any = None) -> tuple[list[float], list[int], list[str]]:
    """(score, relevant 0/1, query id) of the top ``depth`` hits of each judged query."""
    scores: list[float] = []
    labels: list[int] = []
    owners: list[str] = []
    for qid, text in queries.items():
        judged = qrels.get(qid)
        if not judged:
            continue
        try:
            hits = collection.search(text, k=depth, mode=mode, rerank=rerank)
        except InvalidInputError:  # a query this mode cannot search (no bm25 words, say) judges nothing
            continue
        for h in hits:
            scores.append(float(h.score))
            labels.append(1 if judged.get(_doc(h.id, h.metadata), 0) > 0 else 0)
            owners.append(qid)
    return scores, labels, owners


def pseudo_queries(collection: Collection, n: int, seed: int = 0) -> tuple[dict[str, str], dict[str, dict[str, int]]]:
    """Inverse-cloze pairs: a sentence cut from ``n`` random records' texts, each judged relevant to its own
    document only."""
    rng = random.Random(seed)
    records = [(rid, text, meta) for b in collection.export_records(batch=5000)
               for rid, text, meta in zip(b.ids, b.texts, b.metadata, strict=True) if text]
    rng.shuffle(records)
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    for rid, text, meta in records:
        sentences = _SENTENCE.findall(text)
        if not sentences:
            continue
        q = f"pseudo-{len(queries)}"
        queries[q] = rng.choice(sentences).strip()
        qrels[q] = {_doc(rid, meta): 1}
        if len(queries) >= n:
            break
    return queries, qrels


def calibrate(collection: Collection, *, queries: Mapping[str, str] | None = None,
              qrels: Mapping[str, Mapping[str, int]] | None = None, mode: str = "dense", depth: int = 20,
              rerank: Any = None, pseudo: int = 200, holdout: float = 0.0, seed: int = 0) -> dict[str, Any]:
    """Fit and store the relevance map of one search mode (and reranker, when given) of ``collection``.

    Args:
        queries, qrels: judged queries (id -> text, id -> {doc id: grade}); without them, ``pseudo``
            inverse-cloze queries cut from the collection.
        mode: the search mode to calibrate ('dense', 'bm25', 'hybrid').
        depth: hits judged per query.
        rerank: a reranker: calibrates its scores (a separate map, used when searches rerank).
        holdout: share of the queries kept out of the fit; their ECE is reported.

    Returns:
        ``{"mode", "source", "queries", "hits", "relevant", "ece_fit", "ece_holdout", "holdout_queries"}``.
    """
    if (queries is None) != (qrels is None):
        raise InvalidInputError("calibrate needs both queries and qrels, or neither (then pseudo-queries are used)")
    if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= 1000:
        raise InvalidInputError(f"depth must be an integer in 1..1000, got {depth!r}")
    if isinstance(holdout, bool) or not isinstance(holdout, (int, float)) or not 0 <= holdout < 1:
        raise InvalidInputError(f"holdout must lie in [0, 1), got {holdout!r}")
    source = "qrels"
    if queries is None or qrels is None:
        queries, qrels = pseudo_queries(collection, pseudo, seed)
        source = "pseudo (inverse cloze)"
    ids = sorted(q for q in queries if qrels.get(q))
    random.Random(seed).shuffle(ids)
    cut = round(len(ids) * holdout)
    held, used = set(ids[:cut]), ids[cut:]
    scores, labels, owners = judged_hits(collection, {q: queries[q] for q in ids}, qrels, mode=mode, depth=depth,
                                         rerank=rerank)
    fit_idx = [i for i, o in enumerate(owners) if o not in held]
    cal = fit([scores[i] for i in fit_idx], [labels[i] for i in fit_idx], source)
    hold_idx = [i for i, o in enumerate(owners) if o in held]
    ece_fit = expected_calibration_error(cal([scores[i] for i in fit_idx]), [labels[i] for i in fit_idx])
    ece_hold = (expected_calibration_error(cal([scores[i] for i in hold_idx]), [labels[i] for i in hold_idx])
                if hold_idx else None)
    key = mode_key(mode, rerank is not None)
    notes = collection.notes().get(NOTE) or {}
    fingerprint = collection.settings.fingerprint
    modes = dict(notes.get("modes", {})) if notes.get("fingerprint") == fingerprint else {}
    modes[key] = cal.to_json()
    collection.set_notes(**{NOTE: {"fingerprint": fingerprint, "modes": modes}})
    return {"mode": key, "source": source, "queries": len(used), "hits": len(fit_idx),
            "relevant": int(sum(labels[i] for i in fit_idx)), "ece_fit": ece_fit, "ece_holdout": ece_hold,
            "holdout_queries": len(held)}


def stored(collection: Collection, mode: str, reranked: bool) -> Calibration | None:
    """The stored map for this mode, or None (none fitted, or fitted for another encoder)."""
    return from_note(collection.notes().get(NOTE), collection.settings.fingerprint, mode, reranked)


def from_note(note: Any, fingerprint: str | None, mode: str, reranked: bool) -> Calibration | None:
    """The map for ``mode`` in a calibration note, when it was fitted with this encoder ``fingerprint``."""
    if not isinstance(note, Mapping) or note.get("fingerprint") != fingerprint:
        return None
    data = note.get("modes", {}).get(mode_key(mode, reranked))
    return Calibration.from_json(data) if isinstance(data, Mapping) else None


def check_min_relevance(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not (
            0.0 <= value <= 1.0):
        raise InvalidInputError(f"min_relevance is a probability in [0, 1], got {value!r}")
    return float(value)


__all__ = ["Calibration", "calibrate", "check_min_relevance", "expected_calibration_error", "fit", "from_note",
           "stored"]
