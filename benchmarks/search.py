"""Vector search: embedsmith collections against faiss (HNSW and flat) and hnswlib, in one run.

Data: clustered synthetic vectors (a mixture of --clusters Gaussians, L2-normalised, dim 384) and, with
--real, MiniLM vectors of every text under ../shared/data (embedded once, cached in the embedsmith cache).
Single-query loops (as an application calls search), k=10, the same M / efConstruction / efSearch for
every HNSW. Recall@10 is against exact (faiss IndexFlatIP).

    python benchmarks/search.py --n 100000 --queries 1000
    python benchmarks/search.py --real --queries 1000
    python benchmarks/search.py --n 100000 --queries 1000 --store "$(scripts/start-postgres.sh | tail -n 1)"

With --store postgresql://..., the same collections are also built on PostgreSQL + pgvector (in a temporary
schema, dropped afterwards): ingest rate (binary COPY, then one HNSW build over the first batch), and
k=10 q/s and recall@10 through Collection.search, beside the embedded store in the same run.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def synthetic(n: int, q: int, dim: int, clusters: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(clusters, dim)).astype(np.float32)
    spread = 0.6  # within-cluster noise relative to the centre scale, so neighbours are not trivial

    def draw(m: int) -> np.ndarray:
        x = centers[rng.integers(0, clusters, m)] + spread * rng.normal(size=(m, dim)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    return draw(n).astype(np.float32), draw(q).astype(np.float32)


def real_texts() -> list[str]:
    texts: list[str] = []
    for f in sorted((SHARED / "stsb").glob("stsb-en-*.csv")):
        with open(f, newline="", encoding="utf-8") as fh:
            for row in csv.reader(fh):
                texts += row[:2]
    with open(SHARED / "banking77" / "train.csv", newline="", encoding="utf-8") as fh:
        texts += [r["text"] for r in csv.DictReader(fh)]
    for f in sorted((SHARED / "tatoeba").glob("*")):
        if f.is_file() and f.name.startswith("tatoeba."):
            texts += f.read_text(encoding="utf-8").splitlines()
    for line in (SHARED / "cranfield-beir-dev" / "corpus.jsonl").read_text().splitlines():
        row = json.loads(line)
        texts.append(f"{row['title']}\n{row['text']}")
    sick = SHARED / "sick"
    for f in sorted(sick.glob("*.txt")):
        with open(f, encoding="utf-8") as fh:
            for row in csv.DictReader(fh, delimiter="\t"):
                texts += [row.get("sentence_A", ""), row.get("sentence_B", "")]
    return list(dict.fromkeys(t.strip() for t in texts if t and t.strip()))


def real_vectors(q: int) -> tuple[np.ndarray, np.ndarray]:
    from embedsmith import load_encoder
    from embedsmith.encoders.base import cache_dir

    cache = cache_dir() / "bench-real-minilm.npy"
    if not cache.is_file():
        texts = real_texts()
        print(f"embedding {len(texts)} real texts with minilm once (cached in {cache})")
        vecs = load_encoder("minilm", backend="onnx").encode(texts, show_progress=True)
        np.save(cache, vecs)
    vecs = np.load(cache)
    rng = np.random.default_rng(1)
    order = rng.permutation(len(vecs))
    return vecs[order[q:]], vecs[order[:q]]


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def loop_qps(fn, queries: np.ndarray) -> tuple[float, list[np.ndarray]]:  # type: ignore[no-untyped-def]
    out = [fn(queries[0])]
    t = time.perf_counter()
    out = [fn(q) for q in queries]
    return len(queries) / (time.perf_counter() - t), out


def recall(found: list[np.ndarray], truth: np.ndarray) -> float:
    return float(np.mean([len(set(f.tolist()) & set(t.tolist())) / len(t) for f, t in zip(found, truth, strict=True)]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--real", action="store_true", help="MiniLM vectors of ../shared/data instead of synthetic")
    ap.add_argument("--m", type=int, default=32)
    ap.add_argument("--ef-construction", type=int, default=128)
    ap.add_argument("--ef", type=int, default=64)
    ap.add_argument("--precisions", default="float32,int8,binary")
    ap.add_argument("--no-hnswlib", action="store_true")
    ap.add_argument("--skip-peers", action="store_true", help="only embedsmith (recall still against exact)")
    ap.add_argument("--store", help="also run on this PostgreSQL store (postgresql://...); int8 is skipped there")
    args = ap.parse_args()

    import faiss

    faiss.omp_set_num_threads(2)
    data, queries = real_vectors(args.queries) if args.real else synthetic(
        args.n, args.queries, args.dim, args.clusters)
    n, dim = data.shape
    k = 10
    flat = faiss.IndexFlatIP(dim)
    flat.add(data)
    _, truth = flat.search(queries, k)
    rows: list[tuple[str, float, float, float, float, str]] = []

    def row(name: str, build: float, qps1: float, rec: float, qps2: float = float("nan"), note: str = "") -> None:
        rows.append((name, build, qps1, rec, qps2, note))
        print(f"  {name}: build {build:.1f}s, {qps1:,.0f} q/s, recall {rec:.4f} {note}", flush=True)

    del flat
    faiss_qps = faiss_add_rate = float("nan")
    if not args.skip_peers:
        faiss_qps, faiss_add_rate = peers(args, data, queries, truth, row)

    for precision in args.precisions.split(","):
        ours(args, precision, data, queries, truth, row, faiss_qps, faiss_add_rate)
        if args.store and precision != "int8":  # pgvector has no int8 vectors
            on_postgres(args, precision, data, queries, truth, row)

    label = "real MiniLM vectors" if args.real else f"synthetic, {args.clusters} clusters"
    print(f"\n{n:,} x {dim} ({label}), {len(queries)} queries, k={k}, M={args.m}, "
          f"efConstruction={args.ef_construction}, efSearch={args.ef}; peak RSS {rss_mb():,.0f} MB\n")
    print("| index | build s | q/s (1 thread, one query per call) | recall@10 | q/s (2 threads, batch) | notes |")
    print("|---|---:|---:|---:|---:|---|")
    for name, build, q1, rec, q2, note in rows:
        q2s = "" if q2 != q2 else f"{q2:,.0f}"
        print(f"| {name} | {build:.1f} | {q1:,.0f} | {rec:.4f} | {q2s} | {note} |")


def peers(args, data, queries, truth, row):  # type: ignore[no-untyped-def]
    """faiss flat, faiss HNSW and hnswlib on the same data; returns faiss-HNSW q/s and add rate."""
    import faiss

    n, dim = data.shape
    k = truth.shape[1]
    flat = faiss.IndexFlatIP(dim)
    flat.add(data)
    faiss.omp_set_num_threads(1)
    qps, found = loop_qps(lambda q: flat.search(q[None], k)[1][0], queries)
    faiss.omp_set_num_threads(2)
    t = time.perf_counter()
    flat.search(queries, k)
    row("faiss IndexFlatIP (exact)", 0.0, qps, recall(found, truth), len(queries) / (time.perf_counter() - t))
    faiss.omp_set_num_threads(2)
    t = time.perf_counter()
    hnsw = faiss.IndexHNSWFlat(dim, args.m, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = args.ef_construction
    hnsw.add(data)
    faiss_build = time.perf_counter() - t
    hnsw.hnsw.efSearch = args.ef
    faiss.omp_set_num_threads(1)
    faiss_qps, found = loop_qps(lambda q: hnsw.search(q[None], k)[1][0], queries)
    faiss.omp_set_num_threads(2)
    t = time.perf_counter()
    hnsw.search(queries, k)
    row("faiss IndexHNSWFlat", faiss_build, faiss_qps, recall(found, truth), len(queries) / (time.perf_counter() - t))
    faiss_add_rate = n / faiss_build

    if not args.no_hnswlib:
        import hnswlib

        t = time.perf_counter()
        h = hnswlib.Index(space="ip", dim=dim)
        h.init_index(max_elements=n, M=args.m, ef_construction=args.ef_construction)
        h.set_num_threads(2)
        h.add_items(data, np.arange(n))
        build = time.perf_counter() - t
        h.set_ef(args.ef)
        h.set_num_threads(1)
        qps, found = loop_qps(lambda q: h.knn_query(q[None], k)[0][0], queries)
        h.set_num_threads(2)
        t = time.perf_counter()
        h.knn_query(queries, k)
        row("hnswlib", build, qps, recall(found, truth), len(queries) / (time.perf_counter() - t))
        del h

    return faiss_qps, faiss_add_rate


def ours(args, precision, data, queries, truth, row, faiss_qps, faiss_add_rate):  # type: ignore[no-untyped-def]
    """Build, reopen and search an embedsmith collection at one precision."""
    import faiss

    from embedsmith import open_collection

    n, dim = data.shape
    k = truth.shape[1]
    store = Path(tempfile.mkdtemp(prefix="embedsmith-bench-"))
    try:
        faiss.omp_set_num_threads(2)
        ids = [str(i) for i in range(n)]
        t = time.perf_counter()
        coll = open_collection("bench", store=store, dim=dim, precision=precision, hnsw_m=args.m,
                               ef_construction=args.ef_construction, ef_search=args.ef, exact_below=0,
                               save_every=10**9)
        for i in range(0, n, 50_000):
            coll.add_vectors(data[i : i + 50_000], ids[i : i + 50_000])
        coll.close()
        build = time.perf_counter() - t
        opens = []
        for _ in range(3):  # the median of three opens (the file cache is warm after the build)
            t = time.perf_counter()
            coll = open_collection("bench", store=store, ef_search=args.ef, exact_below=0)
            opens.append(time.perf_counter() - t)
            if len(opens) < 3:
                coll.close()
        open_s = sorted(opens)[1]
        faiss.omp_set_num_threads(1)
        ann = coll._index
        if precision == "float32":
            qps, found = loop_qps(lambda q, ann=ann: ann.search(q, k, ef=args.ef)[0] - 1, queries)
            row("embedsmith ANN layer (AnnIndex.search)", build, qps, recall(found, truth),
                note=f"x faiss-HNSW {qps / faiss_qps:.2f}")
        qps, hits = loop_qps(lambda q, coll=coll: coll.search(q, k=k), queries)
        found = [np.array([int(i) for i in h.ids]) for h in hits]
        disk = sum(p.stat().st_size for p in (store / "bench").iterdir())
        index_file = sum(p.stat().st_size for p in (store / "bench").glob("ann-*.faiss"))
        payload = {"float32": 4 * dim, "float16": 2 * dim, "int8": dim, "binary": dim // 8}[precision]
        row(f"embedsmith Collection.search ({precision}{', rescored' if precision != 'float32' else ''})",
            build, qps, recall(found, truth),
            note=f"x faiss-HNSW {qps / faiss_qps:.2f}; add rate x faiss {(n / build) / faiss_add_rate:.2f}; "
                 f"open {open_s:.2f}s; payload {payload} B/vec; index file {index_file / n:.0f} B/vec; "
                 f"disk {disk / n:.0f} B/vec")
        qps, hits = loop_qps(lambda q, coll=coll: coll.search(q, k=k, include=["ids", "scores"]), queries)
        found = [np.array([int(i) for i in h.ids]) for h in hits]
        row(f"embedsmith Collection.search ({precision}), include ids + scores", build, qps, recall(found, truth),
            note=f"x faiss-HNSW {qps / faiss_qps:.2f}")
        coll.close()
    finally:
        shutil.rmtree(store, ignore_errors=True)


def on_postgres(args, precision, data, queries, truth, row):  # type: ignore[no-untyped-def]
    """Build and search a collection on PostgreSQL + pgvector (same M, efConstruction, efSearch)."""
    import uuid

    import psycopg

    from embedsmith import open_collection

    n, dim = data.shape
    k = truth.shape[1]
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    store = f"{args.store}{'&' if '?' in args.store else '?'}schema={schema}"
    try:
        ids = [str(i) for i in range(n)]
        coll = open_collection("bench", store=store, dim=dim, precision=precision, hnsw_m=args.m,
                               ef_construction=args.ef_construction, ef_search=args.ef, exact_below=0)
        t = time.perf_counter()
        coll.add_vectors(data, ids)  # one transaction: binary COPY, then the HNSW graph built once
        build = time.perf_counter() - t
        qps, hits = loop_qps(lambda q, coll=coll: coll.search(q, k=k), queries)
        found = [np.array([int(i) for i in h.ids]) for h in hits]
        disk = coll.disk_bytes()
        coll.close()
        row(f"PostgreSQL pgvector Collection.search ({precision}{', rescored' if precision != 'float32' else ''})",
            build, qps, recall(found, truth),
            note=f"ingest {n / build:,.0f} vectors/s (COPY + HNSW build); disk {disk / n:.0f} B/vec")
    finally:
        with psycopg.connect(args.store.split("?")[0], autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
