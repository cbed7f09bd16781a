"""Retrieval quality on Cranfield (BEIR layout, graded qrels): bm25, dense, hybrid RRF and weighted fusion.

Peers measured in the same run: bm25s (Lucene-style BM25 with Snowball stemming and English stopwords)
over whole documents, and sentence-transformers' own encode of whole documents (truncated at 256 tokens
as it does), fused with RRF. Metrics by pytrec_eval: nDCG@10, MRR@10, recall@100. Documents cut into
several chunks are scored by their best chunk (hits grouped by ``doc_id``).

Fusion constants (alpha for weighted fusion, k for RRF) are tuned on the odd-numbered queries only; the
table reports the even-numbered ones ("test") and, for the untuned methods, all queries.

    python benchmarks/retrieval.py
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cranfield-beir-dev"


def load(folder: Path) -> tuple[dict[str, dict[str, str]], dict[str, str], dict[str, dict[str, int]]]:
    corpus = {r["_id"]: r for r in map(json.loads, (folder / "corpus.jsonl").read_text().splitlines())}
    queries = {r["_id"]: r["text"] for r in map(json.loads, (folder / "queries.jsonl").read_text().splitlines())}
    qrels: dict[str, dict[str, int]] = {}
    for line in (folder / "qrels" / "dev.tsv").read_text().splitlines()[1:]:
        q, d, s = line.split("\t")
        qrels.setdefault(q, {})[d] = int(s)
    return corpus, {q: t for q, t in queries.items() if q in qrels}, qrels


def evaluate(run: dict[str, dict[str, float]], qrels: dict[str, dict[str, int]], qids: list[str]) -> dict[str, float]:
    import pytrec_eval

    sub_q = {q: qrels[q] for q in qids}
    sub_run = {q: run.get(q, {}) for q in qids}
    ev = pytrec_eval.RelevanceEvaluator(sub_q, {"ndcg_cut.10", "recall.100"})
    res = ev.evaluate(sub_run)
    cut10 = {q: dict(sorted(r.items(), key=lambda kv: -kv[1])[:10]) for q, r in sub_run.items()}
    mrr = pytrec_eval.RelevanceEvaluator(sub_q, {"recip_rank"}).evaluate(cut10)
    return {
        "nDCG@10": float(np.mean([res[q]["ndcg_cut_10"] for q in qids])),
        "MRR@10": float(np.mean([mrr[q]["recip_rank"] for q in qids])),
        "R@100": float(np.mean([res[q]["recall_100"] for q in qids])),
    }


def to_run(ranked: list[tuple[str, float]]) -> dict[str, float]:
    # pytrec_eval sorts by score; keep our order exactly by giving strictly decreasing scores.
    return {d: float(len(ranked) - i) for i, (d, _) in enumerate(ranked)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    from embedsmith import load_encoder, open_collection
    from embedsmith.ingest import index_paths
    from embedsmith.search import reciprocal_rank_fusion, weighted_fusion

    corpus, queries, qrels = load(args.data)
    qids = sorted(queries, key=int)
    tune, test = qids[1::2], qids[0::2]
    enc = load_encoder("minilm", backend="onnx", threads=args.threads)
    store = Path(tempfile.mkdtemp(prefix="embedsmith-cran-"))
    coll = open_collection("cran", store=store, encoder=enc)
    t = time.perf_counter()
    report = index_paths(coll, [args.data / "corpus.jsonl"])
    ingest_s = time.perf_counter() - t
    chunks = [r["text"] for batch in coll.iter_records(batch=5000) for r in batch]
    t = time.perf_counter()
    enc.encode(chunks, kind="document")
    encode_s = time.perf_counter() - t
    print(f"ingestion: {report.summary()}: {len(chunks) / ingest_s:.1f} chunks/s end to end, "
          f"{len(chunks) / encode_s:.1f} chunks/s encode only: ratio {encode_s / ingest_s:.2f}")

    def ours(mode: str, **kw: Any) -> dict[str, list[tuple[str, float]]]:
        out = {}
        for q in qids:
            hits = coll.search(queries[q], k=100, mode=mode, group_by="doc_id", **kw)
            out[q] = [(m["doc_id"], s) for m, s in zip(hits.metadata, hits.scores, strict=True)]
        return out

    runs: dict[str, dict[str, list[tuple[str, float]]]] = {}
    runs["embedsmith bm25 (FTS5)"] = ours("bm25")
    runs["embedsmith dense (minilm, chunks)"] = ours("dense")
    best_k, best = 60, -1.0
    for rrf_k in (10, 30, 60, 100):
        ndcg = evaluate({q: to_run(r) for q, r in ours("hybrid", rrf_k=rrf_k).items()}, qrels, tune)["nDCG@10"]
        if ndcg > best:
            best_k, best = rrf_k, ndcg
    runs["embedsmith hybrid RRF k=60"] = ours("hybrid", rrf_k=60)
    runs[f"embedsmith hybrid RRF k={best_k} (tuned)"] = ours("hybrid", rrf_k=best_k)
    best_a, best = 0.5, -1.0
    for alpha in (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8):
        ndcg = evaluate({q: to_run(r) for q, r in ours("hybrid", fusion="weighted", alpha=alpha).items()},
                        qrels, tune)["nDCG@10"]
        if ndcg > best:
            best_a, best = alpha, ndcg
    runs[f"embedsmith hybrid weighted alpha={best_a} (tuned)"] = ours("hybrid", fusion="weighted", alpha=best_a)
    t = time.perf_counter()
    for q in qids:
        coll.search(queries[q], k=10, mode="hybrid")
    hybrid_ms = (time.perf_counter() - t) / len(qids) * 1000
    coll.close()

    # Peers: bm25s over whole documents; sentence-transformers' encode over whole documents.
    import bm25s
    import Stemmer

    doc_ids = list(corpus)
    texts = [f"{corpus[d]['title']}\n{corpus[d]['text']}" for d in doc_ids]
    stemmer = Stemmer.Stemmer("english")
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(texts, stopwords="en", stemmer=stemmer, show_progress=False),
                    show_progress=False)
    peer_bm25 = {}
    for q in qids:
        res, sc = retriever.retrieve(bm25s.tokenize([queries[q]], stopwords="en", stemmer=stemmer,
                                                    show_progress=False), k=100, show_progress=False)
        peer_bm25[q] = [(doc_ids[i], float(s)) for i, s in zip(res[0], sc[0], strict=True)]
    from sentence_transformers import SentenceTransformer

    from embedsmith.encoders.registry import _minilm_folder

    st = SentenceTransformer(str(_minilm_folder()), device="cpu")
    dv = st.encode(texts, batch_size=32, normalize_embeddings=True)
    qv = st.encode([queries[q] for q in qids], normalize_embeddings=True)
    sims = qv @ dv.T
    peer_dense = {q: [(doc_ids[i], float(sims[n, i])) for i in np.argsort(-sims[n])[:100]]
                  for n, q in enumerate(qids)}
    peer_rrf = {q: reciprocal_rank_fusion([[d for d, _ in peer_dense[q]], [d for d, _ in peer_bm25[q]]])[:100]
                for q in qids}
    peer_weighted = {q: weighted_fusion(peer_dense[q], peer_bm25[q], alpha=best_a)[:100] for q in qids}
    peers = {"peer bm25s (stemming + stopwords)": peer_bm25, "peer sentence-transformers dense": peer_dense,
             "peer RRF of the two": peer_rrf, f"peer weighted alpha={best_a}": peer_weighted}

    print(f"\nCranfield dev: {len(qids)} queries ({len(test)} test / {len(tune)} tune), {len(corpus)} documents, "
          f"{len(chunks)} chunks; hybrid search {hybrid_ms:.1f} ms/query (k=10, text query)\n")
    print("| method | nDCG@10 test | MRR@10 test | R@100 test | nDCG@10 all | MRR@10 all | R@100 all |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, run in {**runs, **peers}.items():
        trec = {q: to_run(r) for q, r in run.items()}
        te, al = evaluate(trec, qrels, test), evaluate(trec, qrels, qids)
        print(f"| {name} | {te['nDCG@10']:.3f} | {te['MRR@10']:.3f} | {te['R@100']:.3f} | "
              f"{al['nDCG@10']:.3f} | {al['MRR@10']:.3f} | {al['R@100']:.3f} |")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
