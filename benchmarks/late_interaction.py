"""Late interaction (MaxSim over MiniLM's token vectors) on Cranfield dev: quality per codec, and latency.

The 1,398 Cranfield dev abstracts are indexed by ``index_paths`` (default chunking) into a MiniLM (ONNX)
collection that stores token vectors (``late_interaction=True``: the default codec, from the same forward
pass). For each of the 113 judged queries the dense (and hybrid) top 100 chunks are reordered by MaxSim
with document token vectors in each :class:`TokenCodec` (float32, float16, int8, int2, binary; PCA to
128/96/64 dims fitted on the corpus's tokens), and fused three ways (RRF of dense, bm25 and MaxSim). Documents
count at their best chunk's rank (as ``eval pipeline`` does).

Stored mode: ``search(rerank=LateInteraction(), candidates=100)`` end to end on the collection (its quality,
which must equal the default codec's row), the bytes per chunk its ``info()`` reports, and the latency of
reranking 100 candidates with token vectors read from the store (query encoded, blobs read in one query,
decoded, scored), against on the fly (the 100 candidates' texts encoded per search) and against blobs
decoded from memory.

    python benchmarks/late_interaction.py
"""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from embedsmith import index_paths, load_encoder, open_collection
from embedsmith.evaluation.metrics import retrieval_scores
from embedsmith.evaluation.pipeline import _doc_ids
from embedsmith.io import read_beir_queries, read_qrels
from embedsmith.rerankers.late_interaction import DEFAULT_PRECISION, LateInteraction, TokenCodec, maxsim
from embedsmith.search import reciprocal_rank_fusion
from embedsmith.types import Hits

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "cranfield-beir-dev"


def main() -> None:
    problems: Counter[str] = Counter()
    queries = read_beir_queries(DATA / "queries.jsonl", problems)
    qrels: dict[str, dict[str, int]] = {}
    for q, d, g in read_qrels(DATA / "qrels" / "dev.tsv", problems):
        qrels.setdefault(q, {})[d] = g
    queries = {q: t for q, t in queries.items() if any(g > 0 for g in qrels.get(q, {}).values())}
    enc = load_encoder("minilm", backend="onnx")
    coll = open_collection("c", store=tempfile.mkdtemp(), encoder=enc, late_interaction=True)
    t0 = time.perf_counter()
    rep = index_paths(coll, [DATA / "corpus.jsonl"])
    index_s = time.perf_counter() - t0
    recs = {r["id"]: r for b in coll.iter_records() for r in b}
    ids = list(recs)
    toks = dict(zip(ids, enc.token_vectors([recs[i]["text"] for i in ids], kind="document"), strict=True))
    lengths = [len(v) for v in toks.values()]
    print(f"{rep.documents} documents, {rep.chunks} chunks, {np.mean(lengths):.0f} tokens per chunk; "
          f"{len(queries)} judged queries\n")
    everything = np.concatenate(list(toks.values()))
    qt = {q: enc.token_vectors([queries[q]], kind="query")[0] for q in queries}
    dense = {q: coll.search(queries[q], k=100, mode="dense") for q in queries}
    hybrid = {q: coll.search(queries[q], k=100, mode="hybrid") for q in queries}
    bm25 = {q: coll.search(queries[q], k=100, mode="bm25") for q in queries}
    rows: list[tuple[str, float, float, str]] = []

    def scored(name: str, run: dict[str, list[str]], size: str = "") -> None:
        s = retrieval_scores(qrels, run, (10, 100))
        rows.append((name, s["ndcg_at_10"], s["recall_at_100"], size))

    def ordered(hits: Hits, s: np.ndarray) -> Hits:
        o = np.argsort(-s, kind="stable")
        return Hits([hits.ids[i] for i in o], [float(s[i]) for i in o], [None] * len(o),
                    [hits.metadata[i] for i in o])

    scored("dense", {q: _doc_ids(h, "doc_id") for q, h in dense.items()})
    scored("hybrid", {q: _doc_ids(h, "doc_id") for q, h in hybrid.items()})
    codecs = [("float32", TokenCodec.checked("float32"))]
    codecs += [(p, TokenCodec.checked(p)) for p in ("float16", "int8", "int2", "binary")]
    codecs += [(f"pca{d} {p}", TokenCodec.checked(p, d).fit(everything)) for d in (128, 96, 64)
               for p in ("int8", "float16")]
    codecs.append(("pca128 binary", TokenCodec.checked("binary", 128).fit(everything)))
    blobs_of: dict[str, dict[str, bytes]] = {}
    for name, codec in codecs:
        blobs = {i: codec.encode(v) for i, v in toks.items()}
        blobs_of[name] = blobs
        d = codec.dims or enc.dim
        docs = {i: codec.decode(b, len(toks[i]), d) for i, b in blobs.items()}
        run = {q: _doc_ids(ordered(dense[q], maxsim(codec.project(qt[q]), [docs[i] for i in dense[q].ids])), "doc_id")
               for q in queries}
        size = f"{np.mean([len(b) for b in blobs.values()]) / 1024:.1f} KB"
        scored(f"dense>maxsim {name}", run, size)
    fused = {}
    on_hybrid = {}
    for q in queries:
        pool = list(dict.fromkeys(dense[q].ids + hybrid[q].ids))
        s = maxsim(qt[q], [toks[i] for i in pool])
        order = [pool[i] for i in np.argsort(-s, kind="stable")]
        f = [i for i, _ in reciprocal_rank_fusion([dense[q].ids, bm25[q].ids, order])]
        fused[q] = _doc_ids(Hits(f, [0.0] * len(f), [None] * len(f), [recs[i]["metadata"] for i in f]), "doc_id")
        on_hybrid[q] = _doc_ids(ordered(hybrid[q], maxsim(qt[q], [toks[i] for i in hybrid[q].ids])), "doc_id")
    scored("hybrid candidates > maxsim", on_hybrid)
    scored("RRF(dense, bm25, maxsim)", fused)
    late = coll.info()["late_interaction"]
    stored = {q: coll.search(queries[q], k=100, rerank=LateInteraction(source="stored"), candidates=100)
              for q in queries}
    scored(f"stored mode ({late['precision']}): search(rerank=LateInteraction())",
           {q: _doc_ids(h, "doc_id") for q, h in stored.items()}, f"{late['bytes_per_chunk'] / 1024:.1f} KB")
    hybrid_late = {q: coll.search(queries[q], k=100, mode="hybrid", late_interaction=True) for q in queries}
    scored(f"stored mode ({late['precision']}): hybrid, late_interaction=True",
           {q: _doc_ids(h, "doc_id") for q, h in hybrid_late.items()})
    print(f"{'Cranfield dev':40s} {'nDCG@10':>8s} {'R@100':>7s} {'per chunk':>10s}")
    for name, n, r, size in rows:
        print(f"{name:40s} {n:8.4f} {r:7.4f} {size:>10s}")

    sample = list(queries)[:40]
    li = LateInteraction(enc, source="on-the-fly")
    coll.search(queries[sample[0]], k=10, rerank=li, candidates=100)
    times = []
    for q in sample:
        t = time.perf_counter()
        li.scores(queries[q], [str(x) for x in dense[q].texts])
        times.append(time.perf_counter() - t)
    print(f"\nrerank 100 on the fly: p50 {np.median(times) * 1000:.0f} ms")
    stored_li = LateInteraction(source="stored")
    for label, timed in (("rerank 100 from the store (query encoded, blobs read, decoded, scored)",
                          lambda q: stored_li.scores(queries[q], [str(x) for x in dense[q].texts], coll=coll,
                                                     ids=dense[q].ids)),
                         ("  of which the read and decode of 100 candidates' blobs",
                          lambda q: coll._late_tokens(list(dense[q].ids), [str(x) for x in dense[q].texts]))):
        timed(sample[0])
        times = []
        for q in sample:
            t = time.perf_counter()
            timed(q)
            times.append(time.perf_counter() - t)
        print(f"{label}: p50 {np.median(times) * 1000:.1f} ms")
    for name in ("int8", "int2", "binary", "pca128 int8"):
        codec = dict(codecs)[name]
        d = codec.dims or enc.dim
        times = []
        for q in sample:
            t = time.perf_counter()
            qv = codec.project(enc.token_vectors([queries[q]], kind="query")[0])
            maxsim(qv, [codec.decode(blobs_of[name][i], len(toks[i]), d) for i in dense[q].ids])
            times.append(time.perf_counter() - t)
        print(f"rerank 100 from {name} blobs in memory (query encoded too): p50 {np.median(times) * 1000:.1f} ms")

    print(f"\nstored token vectors ({DEFAULT_PRECISION}, the default): {late['rows']} chunks, "
          f"{late['tokens_per_chunk']:.0f} tokens and {late['bytes_per_chunk'] / 1024:.1f} KB per chunk, "
          f"{late['bytes'] / 1e6:.1f} MB in all; collection {coll.info()['disk_bytes'] / 1e6:.1f} MB on disk; "
          f"indexed in {index_s:.0f} s (one forward pass for vectors and token vectors)")
    print(f"{'codec':16s} {'bytes/token':>11s} {'KB/chunk':>9s}")
    for name, codec in codecs:
        per = codec.bytes_per_token(enc.dim)
        print(f"{name:16s} {per:11.1f} {per * late['tokens_per_chunk'] / 1024:9.1f}")


if __name__ == "__main__":
    main()
