"""Evaluate a deployed collection as it is: its ANN index against exact search, and every search mode.

Hits are records (often chunks); a hit counts for the document named by its metadata field ``id_field``
(``doc_id``, which :func:`embedsmith.index_paths` writes) or, without it, for its record id. Each
document counts once, at its best chunk's rank.

Every mode is compared with the baseline (the first mode that ran) over the judged queries: per metric the
difference, its paired-bootstrap 95% interval, the permutation p-value and the verdict
(:func:`~embedsmith.evaluation.compare.compare_items`).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..errors import EmbedsmithError, InvalidInputError
from ..io import read_beir_queries, read_qrels
from ..types import Hits
from .compare import compare_items, significance_dict
from .metrics import per_query_scores, retrieval_scores
from .results import ItemScores, MetricItems
from .stats import RESAMPLES

MODES = ("dense", "bm25", "hybrid")
#: the metrics a pipeline report holds per mode, and compares between modes
METRICS = ("ndcg_at_10", "recall_at_100", "mrr_at_10")


@dataclass
class PipelineReport:
    """``ann_recall``: mean share of exact search's top k that the ANN index also returned.
    ``modes``: mode -> scores (``ndcg_at_10``, ``recall_at_100``, ``mrr_at_10``, ``latency_p50_ms``), or
    ``{"error": message}`` when a mode cannot run (e.g. bm25 on a collection without texts)."""

    collection: str
    n_queries: int
    k: int
    ann_recall: float
    modes: dict[str, dict[str, Any]]
    problems: dict[str, int] = field(default_factory=dict)
    #: with ``rag=True``: mode -> {"redundancy": {shaping: ...}, "context_recall": {budget: {context, naive}}}
    rag: dict[str, dict[str, Any]] | None = None
    #: the mode every other is compared with (the first that ran), and per other mode and metric the
    #: comparison (B: the mode, A: the baseline) as ``eval compare --json`` gives it
    baseline: str | None = None
    significance: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = {"collection": self.collection, "n_queries": self.n_queries, "k": self.k,
               f"ann_recall_at_{self.k}": self.ann_recall, "modes": self.modes, "problems": self.problems,
               "baseline": self.baseline, "significance": self.significance}
        if self.rag is not None:
            out["rag"] = self.rag
        return out


def _doc_ids(hits: Hits, id_field: str | None) -> list[str]:
    out: dict[str, None] = {}
    for rid, meta in zip(hits.ids, hits.metadata, strict=True):
        doc = meta.get(id_field) if id_field else None
        out.setdefault(str(doc) if doc is not None else rid, None)
    return list(out)


def evaluate_pipeline(
    collection: Any,
    queries: str | Path | dict[str, str],
    qrels: str | Path | dict[str, dict[str, int]],
    *,
    k: int = 10,
    modes: Sequence[str] = MODES,
    reranker: Any = None,
    candidates: int = 100,
    depth: int = 100,
    id_field: str | None = "doc_id",
    limit: int | None = None,
    show_progress: bool = False,
    rag: bool = False,
    late_interaction: bool = False,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> PipelineReport:
    """Run every judged query through the collection in each mode and score the rankings.

    Args:
        collection: an open :class:`~embedsmith.Collection`.
        queries: query id -> text, or a BEIR ``queries.jsonl`` / ``id<TAB>text`` file.
        qrels: query id -> {document id: grade}, or a BEIR/TREC qrels file.
        k: cut-off of the ANN-vs-exact recall.
        modes: search modes to compare; with ``reranker``, ``rerank`` (hybrid candidates, reranked) is added.
        candidates: first-stage hits handed to the reranker.
        depth: records fetched per query and mode (documents are scored at 10 and 100).
        id_field: metadata field naming a record's document; None scores record ids.
        limit: evaluate only the first ``limit`` judged queries.
        rag: also measure, per dense/hybrid mode, the top 10's redundancy with and without dedup and diversity,
            and the context recall of :meth:`Collection.context` against naive concatenation at 1k/2k/4k tokens.
        late_interaction: add ``dense>maxsim`` (dense candidates reordered by MaxSim) and ``hybrid+maxsim``
            (MaxSim fused with dense and bm25).
        resamples, seed: of the significance test of each mode against the baseline (the first mode that ran).
    """
    problems: Counter[str] = Counter()
    qmap = dict(queries) if isinstance(queries, dict) else read_beir_queries(queries, problems)
    if isinstance(qrels, dict):
        judged = {q: dict(r) for q, r in qrels.items()}
    else:
        judged = {}
        for qid, did, grade in read_qrels(Path(qrels), problems):
            judged.setdefault(qid, {})[did] = grade
    known_docs = ({str(v[0]) for v in collection.distinct(id_field) if v[0] is not None} if id_field else set())
    if not known_docs:  # no record names a document: score record ids
        id_field = None
        known_docs = {r["id"] for batch in collection.iter_records() for r in batch}
    for qid in list(judged):
        if qid not in qmap:
            problems["qrels_unknown_query"] += 1
            del judged[qid]
            continue
        missing = [d for d in judged[qid] if d not in known_docs]
        if missing:
            problems["qrels_unknown_doc"] += len(missing)
        if not any(g > 0 for d, g in judged[qid].items() if d in known_docs):
            problems["queries_without_relevant_doc"] += 1
            del judged[qid]
    qids = list(judged)[:limit]
    if not qids:
        raise InvalidInputError("no judged query has a relevant document in this collection")
    judged = {q: judged[q] for q in qids}

    overlap = []
    for qid in tqdm(qids, desc="ann vs exact", disable=not show_progress):
        ann = collection.search(qmap[qid], k=k, mode="dense").ids
        exact = collection.search(qmap[qid], k=k, mode="dense", exact=True).ids
        overlap.append(len(set(ann) & set(exact)) / max(len(exact), 1))

    all_modes = list(modes) + (["dense>maxsim", "hybrid+maxsim"] if late_interaction else []) + \
        (["rerank"] if reranker is not None else [])
    late = None
    if late_interaction:
        from ..rerankers.late_interaction import LateInteraction

        late = LateInteraction()
    report: dict[str, dict[str, Any]] = {}
    items: dict[str, ItemScores] = {}
    for mode in all_modes:
        run: dict[str, list[str]] = {}
        times = []
        try:
            for qid in tqdm(qids, desc=mode, disable=not show_progress):
                start = time.perf_counter()
                if mode == "rerank":
                    hits = collection.search(qmap[qid], k=depth, mode="hybrid", rerank=reranker,
                                             candidates=max(candidates, depth))
                elif mode == "dense>maxsim":
                    hits = collection.search(qmap[qid], k=depth, mode="dense", rerank=late,
                                             candidates=max(candidates, depth))
                elif mode == "hybrid+maxsim":
                    hits = collection.search(qmap[qid], k=depth, mode="hybrid", late_interaction=late,
                                             candidates=max(candidates, depth))
                else:
                    hits = collection.search(qmap[qid], k=depth, mode=mode)
                times.append(time.perf_counter() - start)
                run[qid] = _doc_ids(hits, id_field)
        except EmbedsmithError as exc:
            report[mode] = {"error": str(exc)}
            continue
        scores = retrieval_scores(judged, run, (10, 100))
        report[mode] = {**{m: scores[m] for m in METRICS}, "latency_p50_ms": float(np.median(times) * 1000)}
        ids, per = per_query_scores(judged, run, (10, 100))
        items[mode] = ItemScores(ids, {m: MetricItems("mean", np.asarray(per[m])) for m in METRICS})
    baseline = next(iter(items), None)
    significance = {mode: significance_dict(compare_items(items[baseline], it, metrics=METRICS,
                                                          resamples=resamples, seed=seed))
                    for mode, it in items.items()
                    if baseline is not None and mode != baseline and len(qids) > 1}  # one query: nothing to resample
    extra = None
    if rag:
        from .rag import context_recall, redundancy

        asked = {q: qmap[q] for q in qids}
        extra = {m: {"redundancy": redundancy(collection, asked, judged, mode=m, id_field=id_field),
                     "context_recall": context_recall(collection, asked, judged, mode=m, id_field=id_field)}
                 for m in modes if m in ("dense", "hybrid") and "error" not in report.get(m, {})}
    return PipelineReport(collection.name, len(qids), k, float(np.mean(overlap)), report, dict(problems), extra,
                          baseline, significance)
