"""RAG measures of a deployed collection: redundancy of the top 10 with and without shaping, and context recall
of :meth:`Collection.context` against naive concatenation of the top chunks, per token budget."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .metrics import ndcg_at_k

SHAPINGS: dict[str, dict[str, Any]] = {"none": {}, "dedup": {"dedup": True}, "diversity 0.3": {"diversity": 0.3}}
BUDGETS = (1000, 2000, 4000)


def redundancy(collection: Any, queries: Mapping[str, str], qrels: Mapping[str, Mapping[str, int]], *, mode: str,
               id_field: str | None, threshold: float = 0.95) -> dict[str, dict[str, float]]:
    """Per shaping: mean pairwise cosine of the top 10 chunks, the share of pairs at ``threshold`` or above,
    and nDCG@10 over documents."""
    from .pipeline import _doc_ids as doc_ids  # one rule for which document a hit counts for

    out = {}
    for label, opts in SHAPINGS.items():
        cos, dup, nd = [], [], []
        for qid, text in queries.items():
            hits = collection.search(text, k=10, mode=mode, **opts)
            if len(hits) > 1:
                v = np.stack([np.asarray(r["vector"], np.float32)
                              for r in collection.get(hits.ids, include_vectors=True)])
                v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
                sim = (v @ v.T)[np.triu_indices(len(v), 1)]
                cos.append(float(sim.mean()))
                dup.append(float((sim >= threshold).mean()))
            wide = collection.search(text, k=40, mode=mode, **opts)
            nd.append(ndcg_at_k(doc_ids(wide, id_field), qrels[qid], 10))
        out[label] = {"mean_pairwise_cosine": float(np.mean(cos)) if cos else 0.0,
                      "near_duplicate_pairs": float(np.mean(dup)) if dup else 0.0, "ndcg_at_10": float(np.mean(nd))}
    return out


def context_recall(collection: Any, queries: Mapping[str, str], qrels: Mapping[str, Mapping[str, int]], *,
                   mode: str, id_field: str | None, budgets: Sequence[int] = BUDGETS) -> dict[str, dict[str, float]]:
    """Per budget: the share of each query's relevant documents whose text reaches the packed context, for
    ``context`` and for the top chunks concatenated in rank order (same tokens: the collection encoder's)."""
    from ..context import token_counter

    count = token_counter(None, collection)
    out = {}
    for budget in budgets:
        ours, naive = [], []
        for qid, text in queries.items():
            relevant = {d for d, g in qrels[qid].items() if g > 0}
            ctx = collection.context(text, budget_tokens=budget, mode=mode)
            ours.append(len(relevant & {p.doc_id for p in ctx.passages}) / len(relevant))
            used, docs = 0, set()
            top = collection.search(text, k=min(1000, budget // 10), mode=mode)
            for rid, chunk, meta in zip(top.ids, top.texts, top.metadata, strict=True):
                n = count((chunk or "") + "\n\n")
                if used + n > budget:
                    break
                used += n
                doc = meta.get(id_field) if id_field else None
                docs.add(str(doc) if doc is not None else rid)
            naive.append(len(relevant & docs) / len(relevant))
        out[str(budget)] = {"context": float(np.mean(ours)), "naive": float(np.mean(naive))}
    return out


__all__ = ["BUDGETS", "context_recall", "redundancy"]
