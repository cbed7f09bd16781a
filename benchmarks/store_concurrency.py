"""Two writer processes and a reader on one collection, then a fresh open that looks for every record.

The scenario of the store issue: each writer calls ``add_vectors`` with 3 random 32-d vectors at a time for
``--seconds``, while a reader loops ``count()`` and ``search()`` (HNSW: exact_below=0) and saves its index on
close. Afterwards a fresh open counts the rows and searches ``--sample`` records by their own vector, exactly
(top 1) and through the graph (top 10).

    python benchmarks/store_concurrency.py --seconds 6 --sample 400
    python benchmarks/store_concurrency.py --store "$(scripts/start-postgres.sh | tail -n 1)"
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time

import numpy as np


def write(store: str, prefix: str, seconds: float) -> None:
    from embedsmith import open_collection

    rng = np.random.default_rng(sum(map(ord, prefix)))
    with open_collection("bench", store=store, dim=32, exact_below=0) as c:
        end, n = time.monotonic() + seconds, 0
        while time.monotonic() < end:
            ids = c.add_vectors(rng.normal(size=(3, 32)).astype(np.float32), [f"{prefix}{n}-{i}" for i in range(3)])
            print(" ".join(ids), flush=True)  # acknowledged
            n += 1


def read(store: str, stop: str) -> None:
    from embedsmith import open_collection

    rng = np.random.default_rng(0)
    loops = 0
    with open_collection("bench", store=store, dim=32, exact_below=0) as c:
        while True:
            last = os.path.exists(stop)
            c.count()
            c.search(rng.normal(size=32).astype(np.float32), k=10)
            loops += 1
            if last:
                break
    print(loops)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--sample", type=int, default=400)
    ap.add_argument("--store", help="a folder or postgresql:// DSN (default: a temporary folder)")
    ap.add_argument("--role", choices=["writer", "reader"], help=argparse.SUPPRESS)
    ap.add_argument("--arg", help=argparse.SUPPRESS)
    args = ap.parse_args()
    store = args.store or tempfile.mkdtemp(prefix="embedsmith-concurrency-")
    if args.role == "writer":
        write(store, str(args.arg), args.seconds)
        return
    if args.role == "reader":
        read(store, str(args.arg))
        return

    from embedsmith import delete_collection, list_collections, open_collection

    if "bench" in list_collections(store):
        delete_collection("bench", store=store)
    open_collection("bench", store=store, dim=32, exact_below=0).close()
    stop = os.path.join(tempfile.mkdtemp(), "stop")
    me = [sys.executable, __file__, "--store", store, "--seconds", str(args.seconds)]
    reader = subprocess.Popen([*me, "--role", "reader", "--arg", stop], stdout=subprocess.PIPE, text=True)
    writers = [subprocess.Popen([*me, "--role", "writer", "--arg", p], stdout=subprocess.PIPE, text=True)
               for p in ("a", "b")]
    acknowledged = [i for w in writers for i in w.communicate()[0].split()]
    open(stop, "w").close()
    loops = int(reader.communicate()[0])
    with open_collection("bench", store=store, exact_below=0) as c:
        vectors = {r["id"]: r["vector"] for batch in c.iter_records(batch=5000) for r in batch}
        sample = random.Random(1).sample(acknowledged, min(args.sample, len(acknowledged)))
        exact = sum(c.search(vectors[i], k=1, exact=True).ids == [i] for i in sample if i in vectors)
        graph = sum(i in c.search(vectors[i], k=10, ef=200).ids for i in sample if i in vectors)
        count = c.count()
    kind = "PostgreSQL" if store.startswith("postgres") else "SQLite"
    print(f"| store | acknowledged | count() | stored | reader loops | sampled | found exact (top 1) | "
          f"found HNSW (top 10) |\n|---|---:|---:|---:|---:|---:|---:|---:|\n| {kind} | {len(acknowledged)} | "
          f"{count} | {len(set(acknowledged) & set(vectors))} | {loops} | {len(sample)} | {exact} | {graph} |")
    if store.startswith("postgres"):
        delete_collection("bench", store=store)


if __name__ == "__main__":
    main()
