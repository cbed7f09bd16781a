"""Filtered search, open time, memory per record and search_many, on one embedded collection.

The collection holds --n clustered synthetic 384-d vectors (benchmarks/search.py's generator) with metadata
{"bucket": 0..99, "year": 1900 + bucket}: a filter on one bucket matches 1% of the records. One query per
call, k=10, M=32, efConstruction=128, efSearch=64; recall@10 is against the exact top 10 of the matching rows.

    python benchmarks/filtered.py --n 1000000
    python benchmarks/filtered.py --n 100000 --precisions float32,int8,binary

Rows: faiss IndexHNSWFlat unfiltered (the peer, same M/ef), Collection.search unfiltered, the 1% filter
without an index (graph walk, widened until k pass), and with create_index (exact over the matching rows);
search_many against faiss's own batch search. Memory per record: RSS growth of opening the collection in a
fresh process, divided by n.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from search import synthetic

OPEN = """
import json, resource, sys, time
from embedsmith import open_collection
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
before = rss(); t = time.perf_counter()
c = open_collection("bench", store=sys.argv[1], exact_below=0)
print(json.dumps({"open_s": time.perf_counter() - t, "rss_bytes": rss() - before}))
"""


def p50_ms(fn, queries) -> tuple[float, list]:  # type: ignore[no-untyped-def]
    out, lat = [], []
    for q in queries:
        t = time.perf_counter()
        out.append(fn(q))
        lat.append(time.perf_counter() - t)
    return float(np.median(lat) * 1000), out


def recall(found: list[list[str]], truth: list[list[str]]) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--precisions", default="float32")
    ap.add_argument("--ef", type=int, default=64)
    ap.add_argument("--skip-peer", action="store_true", help="no faiss HNSW build (at 1M it takes ~5 min)")
    args = ap.parse_args()

    import faiss

    from embedsmith import open_collection

    data, queries = synthetic(args.n, args.queries, 384, 1000)
    bucket = np.random.default_rng(3).integers(0, 100, args.n)
    rows = np.nonzero(bucket == 7)[0]
    k = 10
    sub = data[rows]
    filtered_truth = [[str(r) for r in rows[np.argsort(-(sub @ q), kind="stable")[:k]]] for q in queries]
    flat = faiss.IndexFlatIP(384)
    flat.add(data)
    _, exact = flat.search(queries, k)
    truth = [[str(i) for i in row] for row in exact]
    del flat
    table: list[tuple[str, str, str, str, str]] = []

    def row(name: str, p50: float, rec: float, ratio: str = "", note: str = "") -> None:
        table.append((name, f"{p50:.3f}", f"{rec:.4f}", ratio, note))
        print(f"  {name}: p50 {p50:.3f} ms, recall {rec:.4f} {ratio} {note}", flush=True)

    faiss_p50 = faiss_batch = float("nan")
    if not args.skip_peer:
        faiss.omp_set_num_threads(2)
        t = time.perf_counter()
        hnsw = faiss.IndexHNSWFlat(384, 32, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = 128
        hnsw.add(data)
        faiss_build = time.perf_counter() - t
        hnsw.hnsw.efSearch = args.ef
        faiss.omp_set_num_threads(1)
        faiss_p50, found = p50_ms(lambda q: hnsw.search(q[None], k)[1][0], queries)
        row("faiss IndexHNSWFlat, unfiltered", faiss_p50, recall([[str(i) for i in f] for f in found], truth),
            "1.00", f"build {faiss_build:.0f} s")
        faiss.omp_set_num_threads(2)
        t = time.perf_counter()
        hnsw.search(queries, k)
        faiss_batch = len(queries) / (time.perf_counter() - t)
        del hnsw

    light, where = ["ids", "scores"], {"bucket": 7}
    for precision in args.precisions.split(","):
        store = Path(tempfile.mkdtemp(prefix="embedsmith-filtered-"))
        try:
            faiss.omp_set_num_threads(2)
            t = time.perf_counter()
            coll = open_collection("bench", store=store, dim=384, precision=precision, exact_below=0,
                                   ef_search=args.ef, save_every=10**9)
            for i in range(0, args.n, 50_000):
                j = min(args.n, i + 50_000)
                coll.add_vectors(data[i:j], [str(x) for x in range(i, j)],
                                 metadata=[{"bucket": int(b), "year": 1900 + int(b)} for b in bucket[i:j]])
            coll.close()
            build = time.perf_counter() - t
            opened = [json.loads(subprocess.run([sys.executable, "-c", OPEN, str(store)], capture_output=True,
                                                text=True, check=True).stdout) for _ in range(3)]
            open_s = sorted(o["open_s"] for o in opened)[1]
            per_record = sorted(o["rss_bytes"] for o in opened)[1] / args.n
            coll = open_collection("bench", store=store, exact_below=0, ef_search=args.ef)
            faiss.omp_set_num_threads(1)
            p50, hits = p50_ms(lambda q, c=coll: c.search(q, k=k, include=light).ids, queries)
            row(f"Collection.search ({precision}), unfiltered, include ids+scores", p50, recall(hits, truth),
                f"{faiss_p50 / p50:.2f}",
                f"build {build:.0f} s; open {open_s:.2f} s; {per_record:,.0f} B/record in memory after open")
            p50, hits = p50_ms(lambda q, c=coll: c.search(q, k=k).ids, queries)
            row(f"Collection.search ({precision}), unfiltered, texts+metadata", p50, recall(hits, truth),
                f"{faiss_p50 / p50:.2f}")
            p50, hits = p50_ms(lambda q, c=coll: c.search(q, k=k, where=where, include=light).ids, queries)
            row(f"Collection.search ({precision}), 1% filter, no index", p50, recall(hits, filtered_truth),
                note="graph walk widened until k pass")
            t = time.perf_counter()
            coll.create_index("bucket")
            made = time.perf_counter() - t
            p50, hits = p50_ms(lambda q, c=coll: c.search(q, k=k, where=where, include=light).ids, queries)
            row(f"Collection.search ({precision}), 1% filter, create_index('bucket')", p50,
                recall(hits, filtered_truth), note=f"exact over the matching rows; index built in {made:.1f} s")
            p50, hits = p50_ms(lambda q, c=coll: c.search(q, k=k, where=where).ids, queries)
            row(f"Collection.search ({precision}), 1% filter, indexed, texts+metadata", p50,
                recall(hits, filtered_truth))
            faiss.omp_set_num_threads(2)
            t = time.perf_counter()
            many = coll.search_many(queries, k=k, include=light)
            rate = len(queries) / (time.perf_counter() - t)
            table.append((f"search_many ({precision}), {len(queries)} queries, 2 threads", f"{rate:,.0f} q/s",
                          f"{recall([h.ids for h in many], truth):.4f}", f"{rate / faiss_batch:.2f}",
                          f"faiss batch {faiss_batch:,.0f} q/s"))
            print("  " + " | ".join(table[-1]), flush=True)
            coll.close()
        finally:
            shutil.rmtree(store, ignore_errors=True)

    print(f"\n{args.n:,} x 384 synthetic (1000 clusters), {len(queries)} queries, k={k}, M=32, "
          f"efConstruction=128, efSearch={args.ef}; the filter matches {len(rows):,} records "
          f"({len(rows) / args.n:.1%})\n")
    print("| search | p50 ms | recall@10 | x faiss-HNSW (p50 ratio) | notes |")
    print("|---|---:|---:|---:|---|")
    for r in table:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
