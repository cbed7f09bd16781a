"""Pipeline throughput and latency: ingestion vs pure encode, cross-encoder rerank, hybrid search at scale.

1. Ingestion of --docs synthetic documents (files on disk, 30-90 words each): chunks/s end to end
   (read, chunk, embed, store) as a ratio to ``encode`` alone on the same chunks.
2. Reranking 100 candidates with a MiniLM-size cross-encoder (initialised from all-MiniLM-L6-v2: its
   scores are meaningless, its cost is a trained one's): pairs/s, p50/p90 latency.
3. Search latency (dense, bm25, hybrid RRF; the text query embedded each time) over --chunks chunks
   made of 3-8 real sentences drawn from ../shared/data (STSb, SICK, Banking77, Cranfield), so that
   word frequencies are those of real text; queries are Cranfield's. Vectors are synthetic (embedding
   100k chunks would take most of an hour here and measure the encoder, not the search).

    python benchmarks/pipeline.py --docs 10000 --chunks 100000
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

WORDS = ("wing lift drag flow shock wave boundary layer heat transfer slab pressure velocity turbulent laminar "
         "nozzle jet panel flutter load stress plate shell buckling supersonic hypersonic subsonic mach number "
         "reynolds viscous inviscid separation transition cone cylinder sphere body fin tail rotor blade engine "
         "combustion temperature surface skin friction coefficient theory experiment tunnel model data solution "
         "equation method analysis numerical approximate exact linear nonlinear stability oscillation vortex wake "
         "gas air density entropy energy momentum conduction radiation cooling ablation reentry vehicle missile"
         ).split()


def synthetic_text(rng: random.Random, lo: int, hi: int) -> str:
    sentences = []
    n = rng.randint(lo, hi)
    while n > 0:
        m = min(n, rng.randint(6, 14))
        sentences.append(" ".join(rng.choice(WORDS) for _ in range(m)).capitalize() + ".")
        n -= m
    return " ".join(sentences)


def pct(values: list[float], p: float) -> float:
    return float(np.percentile(values, p))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=10_000)
    ap.add_argument("--chunks", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--parts", default="ingest,rerank,search", help="which of ingest, rerank, search to run")
    args = ap.parse_args()
    parts = set(args.parts.split(","))

    from embedsmith import load_encoder

    rng = random.Random(0)
    enc = load_encoder("minilm", backend="onnx", threads=args.threads)
    work = Path(tempfile.mkdtemp(prefix="embedsmith-pipeline-"))
    rows: list[tuple[str, ...]] = []
    if "ingest" in parts:
        ingest(args, rng, enc, work, rows)
    if "rerank" in parts:
        rerank(args, rng, work, rows)
    if "search" in parts:
        search(args, rng, enc, work, rows)
    print(f"\nthreads={args.threads}\n")
    print("| what | size | measured | ratio / note |")
    print("|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


def ingest(args, rng, enc, work, rows):  # type: ignore[no-untyped-def]
    from embedsmith import open_collection
    from embedsmith.ingest import index_paths

    folder = work / "docs"
    folder.mkdir()
    for i in range(args.docs):
        (folder / f"doc{i:05d}.txt").write_text(synthetic_text(rng, 30, 90))
    with open_collection("ingest", store=work / "store", encoder=enc) as coll:
        t = time.perf_counter()
        report = index_paths(coll, [folder])
        ingest_s = time.perf_counter() - t
        chunks = [r["text"] for batch in coll.iter_records(batch=5000) for r in batch]
    t = time.perf_counter()
    enc.encode(chunks, kind="document")
    encode_s = time.perf_counter() - t
    rows.append(("ingestion, synthetic .txt files", f"{report.documents} docs, {len(chunks)} chunks",
                 f"{len(chunks) / ingest_s:,.0f} chunks/s end to end vs {len(chunks) / encode_s:,.0f} encode only",
                 f"{encode_s / ingest_s:.2f}x encode"))



def rerank(args, rng, work, rows):  # type: ignore[no-untyped-def]
    """Rerank latency with a MiniLM-size cross-encoder, per backend."""
    from sentence_transformers import CrossEncoder

    from embedsmith.encoders.registry import _minilm_folder
    from embedsmith.rerankers import Reranker

    ce_dir = work / "ce"
    CrossEncoder(str(_minilm_folder()), num_labels=1, device="cpu", local_files_only=True).save(str(ce_dir))
    import torch

    torch.set_num_threads(args.threads)
    candidates = [synthetic_text(rng, 60, 180) for _ in range(100)]
    queries = [f"query {i} about " + synthetic_text(rng, 5, 10) for i in range(10)]
    reference = None
    for backend in ("torch", "onnx", "onnx-int8"):
        reranker = Reranker(ce_dir, device="cpu", backend=backend, threads=args.threads)
        reranker.logits("warm up", candidates[:8])
        lat = []
        for q in queries:
            t = time.perf_counter()
            logits = reranker.logits(q, candidates)
            lat.append(time.perf_counter() - t)
        if reference is None:
            reference = logits
        agree = float(np.corrcoef(logits, reference)[0, 1])
        rows.append((f"rerank 100 candidates, {backend} (MiniLM-L6 cross-encoder, 60-180 word passages)",
                     "10 queries", f"p50 {pct(lat, 50):.2f} s, p90 {pct(lat, 90):.2f} s",
                     f"{100 / statistics.median(lat):,.0f} pairs/s; logit corr. to torch {agree:.4f}"))



def search(args, rng, enc, work, rows):  # type: ignore[no-untyped-def]
    from embedsmith import open_collection

    sys.path.insert(0, str(Path(__file__).parent))
    from search import SHARED, real_texts

    sentences = [s for t in real_texts() for s in re.split(r"(?<=[.!?])\s+", t) if len(s.split()) > 3]
    cran_queries = [json.loads(x)["text"] for x in
                    (SHARED / "cranfield-beir-dev" / "queries.jsonl").read_text().splitlines()]

    def real_chunk() -> str:
        return " ".join(rng.choice(sentences) for _ in range(rng.randint(3, 8)))

    with open_collection("big", store=work / "store", dim=enc.dim, save_every=10**9) as big:
        big._encoder = enc  # text queries are embedded with MiniLM
        vec_rng = np.random.default_rng(0)
        centers = vec_rng.normal(size=(1000, enc.dim)).astype(np.float32)
        t = time.perf_counter()
        for start in range(0, args.chunks, 20_000):
            n = min(20_000, args.chunks - start)
            v = centers[vec_rng.integers(0, 1000, n)] + 0.6 * vec_rng.normal(size=(n, enc.dim)).astype(np.float32)
            big.add_vectors(v, [f"c{start + i}" for i in range(n)],
                            texts=[real_chunk() for _ in range(n)])
        build_s = time.perf_counter() - t
        qs = [cran_queries[i % len(cran_queries)] for i in range(args.queries)]
        for q in qs[:10]:
            big.search(q, k=10, mode="hybrid")
        stages = {"dense": [], "bm25": [], "hybrid": []}
        for q in qs:
            for mode in stages:
                t = time.perf_counter()
                big.search(q, k=10, mode=mode)
                stages[mode].append((time.perf_counter() - t) * 1000)
        for mode, ms in stages.items():
            rows.append((f"{mode} search, text query, {args.chunks:,} chunks", f"{args.queries} queries",
                         f"p50 {pct(ms, 50):.1f} ms, p90 {pct(ms, 90):.1f} ms", f"build {build_s:.0f} s"))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
