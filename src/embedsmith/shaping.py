"""Result shaping after the first stage (and any reranking): dedup, score boosts and decay, diversity.

Plain functions over plain values: ranked :class:`~embedsmith.store.base.Candidate` tuples and, where a step
compares hits with each other, their unit vectors [n, d] in the same order. They run in this order, on a pool
larger than k, and the caller keeps the top k:

1. **dedup**: overlapping chunks of one document (same ``doc_id``, or ``source``, with ``start``/``end``
   offsets that overlap) merge into the better one, which takes the union of their offsets and texts; then
   a hit whose vector is within the cosine threshold of a better kept hit is dropped (copies of a text).
2. **boost / decay**: the relevance r (the pool's scores as a share of the best, in [0, 1], so that cosine,
   BM25, fused and reranker scores all compose; min-max for negated distances) times each decay factor,
   plus ``weight * value`` for each boosted numeric field (a missing or non-numeric value counts 0). Decay
   is Qdrant's: ``exp``, ``gauss`` or ``linear`` in the distance from ``origin`` beyond ``offset``, equal to
   ``decay`` at ``scale``; on a number or an ISO 8601 date (then origin is a date or 'now', and scale and
   offset are seconds). A hit without the field gets factor 0; one whose value is of another kind is an error.
3. **diversity**: maximal marginal relevance (Carbonell and Goldstein, 1998) with lambda = 1 - diversity:
   the next hit maximises ``lambda * r - (1 - lambda) * max cosine to the hits already chosen``. 0 keeps
   the order; 1 picks the hit least like those chosen (after the first).

No library we use shapes results this way over our candidates (sentence-transformers has no MMR; LangChain's
needs its own vector store objects), hence the code.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import InvalidInputError

if TYPE_CHECKING:
    from .store.base import Candidate

DEFAULT_DEDUP = 0.95  # cosine at or above which two hits count as copies
DECAY_FUNCTIONS = ("exp", "gauss", "linear")


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidInputError(f"{what} must be a finite number, got {value!r}")
    return float(value)


def _instant(value: Any, what: str) -> float | None:
    """Seconds since the epoch of an ISO 8601 date or date-time ('now' allowed), or None if not a string."""
    if not isinstance(value, str):
        return None
    if value == "now":
        return datetime.now(UTC).timestamp()
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInputError(f"{what}: {value!r} is neither a number nor an ISO 8601 date") from None
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()


@dataclass(frozen=True)
class Decay:
    """A score decay on a numeric or date field (see the module docstring).

    Args:
        field: metadata field.
        origin: where the factor is 1: a number, an ISO 8601 date, or 'now'.
        scale: distance at which the factor equals ``decay``: a positive number (seconds for dates).
        decay: the factor at ``scale``, in (0, 1).
        function: 'exp', 'gauss' or 'linear'.
        offset: distance within which the factor stays 1.
    """

    field: str
    origin: float
    scale: float
    decay: float = 0.5
    function: str = "exp"
    offset: float = 0.0
    dates: bool = False

    @classmethod
    def checked(cls, spec: Decay | Mapping[str, Any]) -> Decay:
        if isinstance(spec, Decay):
            return spec
        if not isinstance(spec, Mapping):
            raise InvalidInputError(f"decay must be an object with field, origin and scale, got {spec!r}")
        unknown = sorted(set(spec) - {"field", "origin", "scale", "decay", "function", "offset"})
        if unknown:
            raise InvalidInputError(f"decay: unknown key {unknown[0]!r}")
        name = spec.get("field")
        if not isinstance(name, str) or not name:
            raise InvalidInputError(f"decay needs a metadata field name, got {name!r}")
        if "origin" not in spec or "scale" not in spec:
            raise InvalidInputError("decay needs origin and scale")
        when = _instant(spec["origin"], "decay origin")
        origin = when if when is not None else _number(spec["origin"], "decay origin")
        scale = _number(spec["scale"], "decay scale")
        if scale <= 0:
            raise InvalidInputError(f"decay scale must be positive, got {spec['scale']!r}")
        decay = _number(spec.get("decay", 0.5), "decay")
        if not 0 < decay < 1:
            raise InvalidInputError(f"decay must lie strictly between 0 and 1, got {decay!r}")
        function = spec.get("function", "exp")
        if function not in DECAY_FUNCTIONS:
            raise InvalidInputError(f"decay function {function!r}: expected exp, gauss or linear")
        offset = _number(spec.get("offset", 0.0), "decay offset")
        if offset < 0:
            raise InvalidInputError(f"decay offset must be >= 0, got {offset!r}")
        return cls(name, origin, scale, decay, str(function), offset, when is not None)

    def factor(self, value: Any) -> float:
        """The factor for a hit whose field holds ``value`` (0 when it has none).

        Raises:
            InvalidInputError: the field holds something else than a number (or, for a date origin, a date).
        """
        if value is None:
            return 0.0
        kind = "an ISO 8601 date" if self.dates else "a number"
        x: float | None = None
        if self.dates and isinstance(value, str):
            try:
                x = _instant(value, "")
            except InvalidInputError:
                x = None
        elif not self.dates and isinstance(value, (int, float)) and not isinstance(value, bool):
            x = float(value)
        if x is None or not math.isfinite(x):
            raise InvalidInputError(f"decay on {self.field!r} needs {kind} in every hit, got {value!r}")
        d = max(0.0, abs(x - self.origin) - self.offset) / self.scale
        if self.function == "exp":
            return self.decay ** d
        if self.function == "gauss":
            return math.exp(math.log(self.decay) * d * d)
        return max(0.0, 1.0 - (1.0 - self.decay) * d)


@dataclass(frozen=True)
class Shaping:
    """What to do to a ranked pool before its top k are kept (all off by default)."""

    diversity: float = 0.0
    dedup: float | None = None
    boost: Mapping[str, float] = field(default_factory=dict)
    decay: tuple[Decay, ...] = ()

    @classmethod
    def checked(cls, *, diversity: Any = None, dedup: Any = None, boost: Any = None, decay: Any = None
                ) -> Shaping | None:
        """The checked shaping, or None when nothing is asked."""
        div = 0.0
        if diversity is not None:
            div = _number(diversity, "diversity")
            if not 0.0 <= div <= 1.0:
                raise InvalidInputError(f"diversity must lie in [0, 1] (MMR's lambda is 1 - diversity), got {div!r}")
        threshold: float | None = None
        if dedup is True:
            threshold = DEFAULT_DEDUP
        elif dedup is not None and dedup is not False:
            threshold = _number(dedup, "dedup")
            if not 0.0 < threshold <= 1.0:
                raise InvalidInputError(f"dedup is a cosine threshold in (0, 1] (or true), got {dedup!r}")
        weights: dict[str, float] = {}
        if boost is not None:
            if not isinstance(boost, Mapping) or not boost:
                raise InvalidInputError(f"boost must be an object of field: weight, got {boost!r}")
            for k, w in boost.items():
                if not isinstance(k, str) or not k:
                    raise InvalidInputError(f"boost: {k!r} is not a metadata field name")
                weights[k] = _number(w, f"boost weight of {k!r}")
        decays: tuple[Decay, ...] = ()
        if decay is not None:
            specs = decay if isinstance(decay, (list, tuple)) else [decay]
            decays = tuple(Decay.checked(d) for d in specs)
        if div == 0.0 and threshold is None and not weights and not decays:
            return None
        return cls(div, threshold, weights, decays)

    @property
    def needs_vectors(self) -> bool:
        return self.diversity > 0 or self.dedup is not None


def _doc_key(c: Candidate) -> Any:
    m = c.metadata
    return m.get("doc_id") if m.get("doc_id") is not None else m.get("source")


def _span(c: Candidate) -> tuple[int, int] | None:
    start, end = c.metadata.get("start"), c.metadata.get("end")
    if isinstance(start, int) and isinstance(end, int) and not isinstance(start, bool) and 0 <= start < end:
        return start, end
    return None


def _merged(group: Sequence[tuple[int, Candidate]]) -> Candidate:
    """The best hit of an overlapping group (the lowest index), widened to the union of their offsets, with the
    union of their texts where each text is its slice (the better hit's text wins where they overlap)."""
    best = min(group)[1]
    if len(group) == 1:
        return best
    spans = [(_span(c), c) for _, c in group]
    lo = min(sp[0] for sp, _ in spans if sp)
    hi = max(sp[1] for sp, _ in spans if sp)
    text = best.text
    if all(c.text is not None and sp is not None and len(c.text) == sp[1] - sp[0] for sp, c in spans):
        buf = [""] * (hi - lo)
        for _, c in sorted(group, key=lambda item: -item[0]):  # worst first, so the better hits paint last
            sp = _span(c)
            if sp is not None and c.text is not None:
                buf[sp[0] - lo : sp[1] - lo] = list(c.text)
        text = "".join(buf)
    merged = [m for _, c in sorted(group) for m in c.metadata.get("merged", [c.id])]
    return best._replace(text=text, metadata=dict(best.metadata, start=lo, end=hi, merged=merged))


def merge_overlapping(cands: Sequence[Candidate]) -> tuple[list[Candidate], list[int]]:
    """Merge the hits of one document whose offsets overlap (directly or through others) into the best of them.

    Returns the kept hits, in their original order (each the best of its group, widened to the union of the
    group's offsets and texts), and for each the index in ``cands`` it came from. A sweep per document over
    the hits sorted by start: O(n log n)."""
    by_doc: dict[Any, list[tuple[int, int, int, Candidate]]] = {}
    alone: list[int] = []
    for i, c in enumerate(cands):
        span, doc = _span(c), _doc_key(c)
        if span is None or doc is None:
            alone.append(i)
        else:
            by_doc.setdefault(doc, []).append((span[0], span[1], i, c))
    kept: dict[int, Candidate] = {i: cands[i] for i in alone}
    for rows in by_doc.values():
        rows.sort(key=lambda r: (r[0], r[2]))
        group: list[tuple[int, Candidate]] = []
        reach = -1
        for start, end, i, c in rows:
            if group and start >= reach:  # no overlap with anything so far: close the group
                best = min(group)[0]
                kept[best] = _merged(group)
                group = []
            group.append((i, c))
            reach = end if len(group) == 1 else max(reach, end)
        if group:
            kept[min(group)[0]] = _merged(group)
    order = sorted(kept)
    return [kept[i] for i in order], order


def relevance(scores: Sequence[float]) -> np.ndarray:
    """Scores as a share of the best, in [0, 1]: ``s / max`` when no score is negative (cosines, BM25, fused and
    reranker scores keep their proportions, so MMR weighs them against cosines as they are), else scaled
    min-max (negated distances). All 1 when they are equal."""
    s = np.asarray(scores, dtype=np.float64)
    if not len(s):
        return s
    lo, hi = float(s.min()), float(s.max())
    if hi - lo <= 1e-12:
        return np.ones_like(s)
    return s / hi if lo >= 0 else (s - lo) / (hi - lo)


def _numeric(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(
        value) else 0.0


def shape(cands: Sequence[Candidate], vectors: np.ndarray | None, s: Shaping, k: int) -> list[Candidate]:
    """The top ``k`` of a best-first pool after dedup, boosts/decay and diversity (see the module docstring).
    ``vectors``: unit vectors of ``cands`` in order (needed for dedup and diversity)."""
    pool = list(cands)
    vecs = vectors
    if s.dedup is not None and pool:
        pool, origin = merge_overlapping(pool)
        vecs = vecs[origin] if vecs is not None else None
        if vecs is not None:
            keep: list[int] = []
            for i in range(len(pool)):
                if not keep or float((vecs[keep] @ vecs[i]).max()) < s.dedup:
                    keep.append(i)
            pool, vecs = [pool[i] for i in keep], vecs[keep]
    if s.boost or s.decay:
        r = relevance([c.score for c in pool])
        shaped = []
        for c, rel in zip(pool, r, strict=True):
            value = float(rel)
            for d in s.decay:
                value *= d.factor(c.metadata.get(d.field))
            value += sum(w * _numeric(c.metadata.get(f)) for f, w in s.boost.items())
            shaped.append(value)
        order = sorted(range(len(pool)), key=lambda i: (-shaped[i], pool[i].id))
        pool = [pool[i].rescored(shaped[i]) for i in order]
        vecs = vecs[order] if vecs is not None else None
    if s.diversity > 0 and vecs is not None and len(pool) > 1:
        lam = 1.0 - s.diversity
        r = relevance([c.score for c in pool])
        chosen = [0]
        best_sim = vecs @ vecs[0]
        left = set(range(1, len(pool)))
        while left and len(chosen) < k:
            i = max(left, key=lambda j: (lam * r[j] - (1 - lam) * best_sim[j], -j))
            chosen.append(i)
            left.discard(i)
            best_sim = np.maximum(best_sim, vecs @ vecs[i])
        pool = [pool[i] for i in chosen]
    return pool[:k]


__all__ = ["DEFAULT_DEDUP", "Decay", "Shaping", "merge_overlapping", "relevance", "shape"]
