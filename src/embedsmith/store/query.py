"""Search planning: the mode (dense, bm25, hybrid), fusion as a small strategy, grouping and reranking.

A plan only calls the collection's first-stage searches (``_dense``, ``_bm25``) and exchanges
:class:`~embedsmith.store.base.Candidate` values; it knows no backend.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ..errors import InvalidInputError
from ..search import RRF_K, best_per_group, reciprocal_rank_fusion, weighted_fusion
from ..shaping import Shaping, shape
from ..types import Hits
from .base import Candidate, best_first
from .filters import CompiledFilter
from .settings import positive_int

if TYPE_CHECKING:
    from ..rerankers import Reranker
    from .base import Collection

MODES = ("dense", "bm25", "hybrid")
HYBRID_POOL = 100  # each list contributes at least its top 100 to the fusion
MAX_K = 10_000  # hits (and rerank candidates) one search may ask for
MAX_QUERIES = 10_000  # queries in one search_many call
INCLUDABLE = frozenset({"texts", "metadata"})  # what hits may carry besides ids and scores


class Fusion(Protocol):
    """Fuses the dense and the bm25 candidates of a hybrid search into one ranking."""

    def fuse(self, dense: Sequence[Candidate], sparse: Sequence[Candidate]) -> list[Candidate]: ...


@dataclass(frozen=True)
class RrfFusion:
    """Reciprocal rank fusion: ``sum 1 / (k + rank)`` over the lists a candidate appears in."""

    k: int = RRF_K

    def fuse(self, dense: Sequence[Candidate], sparse: Sequence[Candidate]) -> list[Candidate]:
        rows = {c.id: c for c in (*sparse, *dense)}
        fused = reciprocal_rank_fusion([[c.id for c in dense], [c.id for c in sparse]], k=self.k)
        return best_first(rows[key].rescored(score) for key, score in fused)


@dataclass(frozen=True)
class WeightedFusion:
    """``alpha * dense + (1 - alpha) * bm25`` after min-max scaling each list."""

    alpha: float = 0.5

    def fuse(self, dense: Sequence[Candidate], sparse: Sequence[Candidate]) -> list[Candidate]:
        rows = {c.id: c for c in (*sparse, *dense)}
        fused = weighted_fusion([(c.id, c.score) for c in dense], [(c.id, c.score) for c in sparse], alpha=self.alpha)
        return best_first(rows[key].rescored(score) for key, score in fused)


def fusion_for(name: str, *, alpha: float, rrf_k: int) -> Fusion:
    if name == "rrf":
        if isinstance(rrf_k, bool) or not isinstance(rrf_k, int) or rrf_k <= 0:
            raise InvalidInputError(f"rrf_k must be a positive integer, got {rrf_k!r}")
        return RrfFusion(rrf_k)
    if name == "weighted":
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
            raise InvalidInputError(f"alpha must be between 0 and 1, got {alpha!r}")
        return WeightedFusion(float(alpha))
    raise InvalidInputError(f"unknown fusion {name!r}; expected rrf or weighted")


@dataclass(frozen=True)
class SearchRequest:
    """A checked search: every argument of :meth:`Collection.search` but the filter."""

    query: str | np.ndarray | Sequence[float]
    k: int
    mode: str
    ef: int
    exact: bool
    rescore: int | None
    fusion: Fusion
    candidates: int | None
    rerank: Reranker | None
    group_by: str | None
    include: frozenset[str] = INCLUDABLE
    shaping: Shaping | None = None
    #: hybrid only: a LateInteraction whose MaxSim order is fused with dense and bm25 (three-way RRF)
    late: Any = None

    @classmethod
    def checked(cls, query: Any, k: Any, *, mode: str, ef: Any, exact: bool, rescore: Any, fusion: str,
                alpha: float, rrf_k: int, candidates: Any, rerank: Reranker | None,
                group_by: str | None, include: Sequence[str] | None = None, diversity: Any = None,
                dedup: Any = None, boost: Any = None, decay: Any = None,
                late_interaction: Any = False) -> SearchRequest:
        k = positive_int(k, "k")
        if k > MAX_K:
            raise InvalidInputError(f"k={k} is more hits than one search returns (at most {MAX_K}); page with a filter")
        if mode not in MODES:
            raise InvalidInputError(f"unknown search mode {mode!r}; expected dense, bm25 or hybrid")
        strategy = fusion_for(fusion, alpha=alpha, rrf_k=rrf_k)
        if candidates is not None:
            candidates = positive_int(candidates, "candidates")
            if candidates > MAX_K:
                raise InvalidInputError(f"candidates={candidates} is more than {MAX_K}")
        if rescore is not None:
            rescore = positive_int(rescore, "rescore")
        ef = positive_int(ef, "ef")
        if mode != "dense" and not isinstance(query, str):
            raise InvalidInputError(f"{mode} search needs a text query, not a vector")
        if rerank is not None and not isinstance(query, str):
            raise InvalidInputError("reranking needs a text query, not a vector")
        if isinstance(query, str):
            from .validate import check_string

            if not query.strip():
                raise InvalidInputError("query is empty")
            check_string(query, "query")
        if group_by is not None and (not isinstance(group_by, str) or not group_by):
            raise InvalidInputError(f"group_by must be a metadata field name, got {group_by!r}")
        shown = INCLUDABLE
        if include is not None:
            if isinstance(include, str) or not all(isinstance(x, str) for x in include):
                raise InvalidInputError(f"include must be a list of names, got {include!r}")
            unknown = sorted(set(include) - INCLUDABLE - {"ids", "scores"})
            if unknown:
                raise InvalidInputError(f"include: unknown {unknown[0]!r}; choose from ids, scores, texts, metadata")
            shown = frozenset(include) & INCLUDABLE
        shaping = Shaping.checked(diversity=diversity, dedup=dedup, boost=boost, decay=decay)
        late = None
        if late_interaction is not False and late_interaction is not None:
            from ..rerankers.late_interaction import LateInteraction

            if mode != "hybrid":
                raise InvalidInputError(f"late_interaction fuses a third list into hybrid search, not {mode}; "
                                        "to reorder dense candidates by MaxSim use rerank=LateInteraction()")
            if late_interaction is True:
                late = LateInteraction()
            elif isinstance(late_interaction, LateInteraction):
                late = late_interaction
            else:
                raise InvalidInputError(f"late_interaction must be True or a LateInteraction, got {late_interaction!r}")
        return cls(query, k, mode, ef, bool(exact), rescore, strategy, candidates, rerank, group_by, shown, shaping,
                   late)

    @property
    def light(self) -> bool:
        """Only ids and scores leave the search, and nothing in it reads texts or metadata."""
        return not self.include and self.rerank is None and self.group_by is None and self.shaping is None

    @property
    def first_stage(self) -> int:
        """Candidates the first stage returns: k, the rerank pool, and room for grouping and shaping."""
        n = (self.candidates or 100) if self.rerank is not None else self.k
        if self.shaping is not None:  # dedup and diversity choose among more than k
            n = max(n, self.candidates or 0, 4 * self.k, 50)
        n = n * 5 if self.group_by is not None else n  # room for several chunks of one document
        return min(n, MAX_K)


def group_key(c: Candidate, field: str) -> Any:
    """A hashable group for ``c``: its value of ``field`` (lists and objects as canonical JSON), or its own id."""
    value = c.metadata.get(field)
    if value is None:
        return ("id", c.id)
    if isinstance(value, (list, dict)):
        return ("json", json.dumps(value, sort_keys=True, ensure_ascii=False))
    return ("value", value)


def query_vector(coll: Collection, r: SearchRequest) -> np.ndarray:
    """The query's checked vector. When a late-interaction stage will score this query with the collection's
    own encoder, its token vectors come from the same forward pass and are handed to that stage: one encoder
    call per search instead of two (about a fifth of a stored-MaxSim search's time on MiniLM)."""
    from ..rerankers.late_interaction import LateInteraction

    late = r.late if r.late is not None else r.rerank
    if not (isinstance(late, LateInteraction) and isinstance(r.query, str) and r.query.strip()):
        return coll._query_vector(r.query)
    enc: Any = coll.encoder
    if late.scoring_encoder(coll) is not enc or not hasattr(enc, "embed_tokens"):
        return coll._query_vector(r.query)
    pooled, tokens = enc.embed_tokens([r.query], kind="query", special_tokens=late.special_tokens)
    late.prime(r.query, enc, tokens[0])
    return coll._query_vector(pooled[0])


def first_stage(coll: Collection, r: SearchRequest, flt: CompiledFilter) -> list[Candidate]:
    n = r.first_stage
    if r.mode == "dense":
        return coll._dense(query_vector(coll, r), n, flt, ef=r.ef, exact=r.exact, rescore=r.rescore,
                           light=r.light)
    if r.mode == "bm25":
        return coll._bm25(str(r.query), n, flt)
    pool = max(n, r.candidates or 0, HYBRID_POOL)
    # bm25 runs in a worker thread (on its own connection) while the query is embedded and the vectors
    # searched: the database, onnxruntime and faiss all release the GIL, so hybrid costs max(), not sum.
    pending = coll._bm25_worker().submit(coll._bm25, str(r.query), pool, flt, reader=True)
    try:
        dense = coll._dense(query_vector(coll, r), pool, flt, ef=r.ef, exact=r.exact, rescore=r.rescore)
    finally:
        sparse = pending.result()
    fused = r.fusion.fuse(dense, sparse)
    if r.late is None:
        return fused
    # MaxSim orders the two-way fusion's top candidates; the three orders are fused by RRF (a MaxSim order of
    # hybrid's candidates alone loses what bm25 contributed: benchmarks/README.md, "Late interaction").
    shortlist = fused[: r.candidates or HYBRID_POOL]
    order = r.late.rerank_candidates(str(r.query), shortlist, coll)
    rows = {c.id: c for c in fused}
    lists = [[c.id for c in dense], [c.id for c in sparse], [shortlist[i].id for i, _, _ in order]]
    k = r.fusion.k if isinstance(r.fusion, RrfFusion) else RRF_K
    return best_first(rows[key].rescored(score) for key, score in reciprocal_rank_fusion(lists, k=k))


def hits_of(cands: Sequence[Candidate]) -> Hits:
    return Hits(ids=[c.id for c in cands], scores=[float(c.score) for c in cands], texts=[c.text for c in cands],
                metadata=[c.metadata for c in cands])


def shown(hits: Hits, include: frozenset[str]) -> Hits:
    """``hits`` with only what the caller asked for: texts None and metadata empty when left out."""
    if include == INCLUDABLE:
        return hits
    n = len(hits.ids)
    return Hits(hits.ids, hits.scores, hits.texts if "texts" in include else [None] * n,
                hits.metadata if "metadata" in include else [{} for _ in range(n)],
                first_stage_scores=hits.first_stage_scores, rerank_logits=hits.rerank_logits)


def reranked_pool(r: SearchRequest, reranker: Reranker, ranked: list[Candidate], coll: Collection | None = None
                  ) -> tuple[list[Candidate], dict[str, tuple[float, float]]]:
    """The rerank pool (the first ``candidates`` of ``ranked``) ordered by the reranker, scored with its
    probability; and each id's (first-stage score, logit)."""
    pool = ranked[: r.candidates or 100]
    missing = [c.id for c in pool if not c.text]
    if missing:
        raise InvalidInputError(f"record {missing[0]!r} has no text to rerank")
    if coll is not None and hasattr(reranker, "rerank_candidates"):  # late interaction reads stored tokens
        order = reranker.rerank_candidates(str(r.query), pool, coll)
    else:
        order = reranker.rerank(str(r.query), [str(c.text) for c in pool])
    order.sort(key=lambda o: (-o[2], pool[o[0]].id))
    return [pool[i].rescored(p) for i, p, _ in order], {pool[i].id: (pool[i].score, lg) for i, _, lg in order}


def rerank_candidates(r: SearchRequest, reranker: Reranker, ranked: list[Candidate], coll: Collection | None = None
                      ) -> Hits:
    pool, before = reranked_pool(r, reranker, ranked, coll)
    return with_rerank(hits_of(pool[: r.k]), before)


def with_rerank(hits: Hits, before: dict[str, tuple[float, float]]) -> Hits:
    return Hits(hits.ids, hits.scores, hits.texts, hits.metadata,
                first_stage_scores=[before[i][0] for i in hits.ids], rerank_logits=[before[i][1] for i in hits.ids])


def unit_vectors(coll: Collection, cands: Sequence[Candidate]) -> np.ndarray:
    """The stored vectors of ``cands`` (full dimension, float32), scaled to unit length, in order."""
    rows = {row["id"]: row["vector"] for row in coll.get([c.id for c in cands], include_vectors=True)}
    if not cands:
        return np.zeros((0, coll.settings.dim), np.float32)
    v = np.stack([np.asarray(rows[c.id], np.float32) for c in cands])
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def run_search(coll: Collection, r: SearchRequest, flt: CompiledFilter) -> Hits:
    """Filters, the first stage, grouping, then reranking, shaping and the top k."""
    return finish(r, first_stage(coll, r, flt), coll)


def run_many(coll: Collection, rs: Sequence[SearchRequest], flt: CompiledFilter) -> list[Hits]:
    """:func:`run_search` for each request (all with the same options): dense first stages as one batch."""
    r = rs[0]
    if r.mode != "dense":
        return [run_search(coll, each, flt) for each in rs]
    vectors = coll._query_vectors([each.query for each in rs])
    found = coll._dense_many(vectors, r.first_stage, flt, ef=r.ef, exact=r.exact, rescore=r.rescore, light=r.light)
    return [finish(each, ranked, coll) for each, ranked in zip(rs, found, strict=True)]


def finish(r: SearchRequest, ranked: list[Candidate], coll: Collection) -> Hits:
    """Grouping, then reranking (or not), shaping and the top k, with only what the caller asked for."""
    if r.group_by is not None:
        field = r.group_by
        ranked = best_per_group(ranked, lambda c: group_key(c, field))
    if r.shaping is None:
        if r.rerank is None:
            return shown(hits_of(ranked[: r.k]), r.include)
        return shown(rerank_candidates(r, r.rerank, ranked, coll), r.include)
    before: dict[str, tuple[float, float]] | None = None
    if r.rerank is not None:
        ranked, before = reranked_pool(r, r.rerank, ranked, coll)
    vectors = unit_vectors(coll, ranked) if r.shaping.needs_vectors else None
    hits = hits_of(shape(ranked, vectors, r.shaping, r.k))
    return shown(with_rerank(hits, before) if before is not None else hits, r.include)


__all__ = ["MAX_QUERIES", "MODES", "Fusion", "RrfFusion", "SearchRequest", "WeightedFusion", "finish", "fusion_for",
           "group_key", "run_many", "run_search"]
