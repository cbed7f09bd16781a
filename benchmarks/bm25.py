"""BM25 latency at scale: the embedded store's bm25 search against bm25s, in the same run.

Corpus: ``--n`` documents of 3-8 real sentences each, drawn from Cranfield abstracts (../shared/data, split at
sentence ends). Queries: Cranfield's 225 queries (the first ``--queries``), one per call, k=10, texts
returned. Peers: bm25s with its numpy backend, PyStemmer's English stemmer and English stopwords (query
tokenization included in its time, as ours includes ours). The store's previous engine, SQLite FTS5, is
gone from the schema; its figures are in benchmarks/README.md.

    python benchmarks/bm25.py --n 100000

Target (issue 17): p50 at 100k documents <= bm25s's p50 (floor 2x).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cranfield-beir-dev"


def corpus(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    rows = [json.loads(line) for line in (DATA / "corpus.jsonl").read_text().splitlines()]
    sentences = [s.strip() + " ." for r in rows for s in r["text"].split(" . ") if len(s.split()) >= 4]
    rng = random.Random(seed)
    docs = [" ".join(rng.sample(sentences, rng.randint(3, 8))) for _ in range(n)]
    queries = [json.loads(line)["text"] for line in (DATA / "queries.jsonl").read_text().splitlines()]
    return docs, queries


def timed(fn, queries: list[str]) -> list[float]:  # type: ignore[no-untyped-def]
    out = []
    for q in queries:
        t = time.perf_counter()
        fn(q)
        out.append(time.perf_counter() - t)
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))] * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=200)
    args = ap.parse_args()

    docs, queries = corpus(args.n)
    queries = queries[: args.queries]
    rows = []

    import bm25s
    import Stemmer

    stemmer = Stemmer.Stemmer("english")
    t = time.perf_counter()
    retriever = bm25s.BM25(backend="numpy")
    retriever.index(bm25s.tokenize(docs, stopwords="en", stemmer=stemmer, show_progress=False), show_progress=False)
    peer_build = time.perf_counter() - t

    def peer(q: str) -> None:
        tokens = bm25s.tokenize([q], stopwords="en", stemmer=stemmer, show_progress=False)
        retriever.retrieve(tokens, corpus=docs, k=10, show_progress=False, n_threads=1)

    peer(queries[0])
    peer_times = timed(peer, queries)

    from embedsmith import open_collection

    with tempfile.TemporaryDirectory() as tmp:
        vectors = np.random.default_rng(0).normal(size=(len(docs), 8)).astype(np.float32)
        c = open_collection("bm25", store=tmp, dim=8)
        t = time.perf_counter()
        c.add_vectors(vectors, [str(i) for i in range(len(docs))], texts=docs)
        write = time.perf_counter() - t
        t = time.perf_counter()
        c.search(queries[0], k=10, mode="bm25")  # builds the term-document matrix from the rows
        build = time.perf_counter() - t
        ours = timed(lambda q: c.search(q, k=10, mode="bm25"), queries)
        hits = c.search(queries[1], k=10, mode="bm25")
        assert len(hits) == 10 and all(hits.texts)
        c.close()  # saves the matrix (bm25.npz) beside the database
        t = time.perf_counter()
        with open_collection("bm25", store=tmp) as again:
            again.search(queries[0], k=10, mode="bm25")  # loads the saved matrix
        reload = time.perf_counter() - t
        size = (Path(tmp) / "bm25" / "bm25.npz").stat().st_size / 1e6

    rows.append(("bm25s (numpy, Snowball, stopwords)", peer_build, peer_times))
    rows.append(("embedsmith bm25 (term-document matrix)", build, ours))
    peer_p50 = pct(peer_times, 50)
    print(f"\n{len(docs):,} documents of 3-8 Cranfield sentences, {len(queries)} Cranfield queries, k=10, "
          f"texts returned; store write {write:.1f} s; reopen + first bm25 search from the saved matrix "
          f"{reload:.2f} s ({size:.0f} MB file)")
    print("\n| engine | index build s | p50 ms | p99 ms | x bm25s p50 |")
    print("|---|---:|---:|---:|---:|")
    for name, b, times in rows:
        print(f"| {name} | {b:.1f} | {pct(times, 50):.2f} | {pct(times, 99):.2f} | {pct(times, 50) / peer_p50:.2f} |")
    ratio = pct(ours, 50) / peer_p50
    verdict = "met" if ratio <= 1 else ("floor met, target NOT met" if ratio <= 2 else "NOT met")
    print(f"\ntarget: p50 <= bm25s p50 (floor 2x): {ratio:.2f}x ({verdict}); mean ours "
          f"{statistics.mean(ours) * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
