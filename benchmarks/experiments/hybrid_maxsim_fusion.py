"""Which three-way fusion of dense, bm25 and MaxSim should hybrid+maxsim use? (issue 20, exploratory)

Cranfield dev, MiniLM ONNX, a stored int2 late-interaction collection (as benchmarks/late_interaction.py).
Every variant is scored on the committed split's 67 train queries (to choose) and 46 validation queries (to
report), and on all 113. Kept exactly as run; figures in benchmarks/README.md ("Late interaction").

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/experiments/hybrid_maxsim_fusion.py
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from embedsmith import index_paths, load_encoder, open_collection
from embedsmith.evaluation.metrics import retrieval_scores
from embedsmith.evaluation.pipeline import _doc_ids
from embedsmith.io import read_beir_queries, read_qrels
from embedsmith.rerankers.late_interaction import LateInteraction
from embedsmith.types import Hits

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data" / "cranfield-beir-dev"


def rrf(lists, weights, k=60):
    scores = {}
    for ranking, w in zip(lists, weights):
        for rank, key in enumerate(ranking, start=1):
            scores[key] = scores.get(key, 0.0) + w / (k + rank)
    return [key for key, _ in sorted(scores.items(), key=lambda kv: -kv[1])]


def main() -> None:
    problems = Counter()
    queries = read_beir_queries(DATA / "queries.jsonl", problems)
    qrels = {}
    for q, d, g in read_qrels(DATA / "qrels" / "dev.tsv", problems):
        qrels.setdefault(q, {})[d] = g
    queries = {q: t for q, t in queries.items() if any(g > 0 for g in qrels.get(q, {}).values())}
    split = json.loads((ROOT / "benchmarks" / "data" / "cranfield-split.json").read_text())
    enc = load_encoder("minilm", backend="onnx")
    coll = open_collection("c", store=tempfile.mkdtemp(), encoder=enc, late_interaction=True)
    index_paths(coll, [DATA / "corpus.jsonl"])
    meta = {r["id"]: r["metadata"] for b in coll.iter_records() for r in b}
    li = LateInteraction(source="stored")
    runs = {}
    for q, text in queries.items():
        dense = coll.search(text, k=100, mode="dense")
        bm25 = coll.search(text, k=100, mode="bm25")
        hybrid = coll.search(text, k=100, mode="hybrid")
        pool = list(dict.fromkeys(hybrid.ids + dense.ids))  # hybrid's shortlist, and dense's top 100
        s = li.scores(text, [""] * len(pool), coll=coll, ids=pool)
        ms = [pool[i] for i in np.argsort(-s, kind="stable")]
        ms_h = [i for i in ms if i in set(hybrid.ids)]
        ms_d = [i for i in ms if i in set(dense.ids)]
        runs.setdefault("hybrid", {})[q] = hybrid.ids
        runs.setdefault("dense>maxsim", {})[q] = ms_d
        runs.setdefault("RRF(dense, bm25, maxsim(hybrid pool)) [today]", {})[q] = rrf([dense.ids, bm25.ids, ms_h],
                                                                                      [1, 1, 1])
        runs.setdefault("RRF(bm25, maxsim(dense pool))", {})[q] = rrf([bm25.ids, ms_d], [1, 1])
        runs.setdefault("RRF(bm25, maxsim(hybrid pool))", {})[q] = rrf([bm25.ids, ms_h], [1, 1])
        runs.setdefault("RRF(bm25, maxsim(union pool))", {})[q] = rrf([bm25.ids, ms], [1, 1])
        for w in (1.5, 2.0, 3.0):
            runs.setdefault(f"RRF(dense, bm25, {w} x maxsim(hybrid pool))", {})[q] = rrf(
                [dense.ids, bm25.ids, ms_h], [1, 1, w])
            runs.setdefault(f"RRF(dense, bm25, {w} x maxsim(union pool))", {})[q] = rrf(
                [dense.ids, bm25.ids, ms], [1, 1, w])
        for w in (0.5, 1.5):
            runs.setdefault(f"RRF({w} x bm25, maxsim(union pool))", {})[q] = rrf([bm25.ids, ms], [w, 1])
    print(f"{'fusion':52s} {'train':>7s} {'valid':>7s} {'all':>7s}")
    for name, run in runs.items():
        docs = {q: _doc_ids(Hits(ids, [0.0] * len(ids), [None] * len(ids), [meta[i] for i in ids]), "doc_id")
                for q, ids in run.items()}
        cols = []
        for part in (split["train"], split["validation"], list(queries)):
            sub = {q: docs[q] for q in part if q in docs}
            cols.append(retrieval_scores({q: qrels[q] for q in sub}, sub, (10,))["ndcg_at_10"])
        print(f"{name:52s} {cols[0]:7.4f} {cols[1]:7.4f} {cols[2]:7.4f}")


if __name__ == "__main__":
    main()
