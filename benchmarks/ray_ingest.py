"""Ray ingestion against in-process ``index`` on the same corpus, at equal threads, into PostgreSQL.

Corpus: the first ``--n`` Cranfield abstracts (shared/data/cranfield-beir-dev), written as JSONL shards of
``--shard`` documents (a shard is the unit Ray hands an actor, and one transaction). Configurations, each into
a fresh collection of one PostgreSQL store:

* in-process: ``index_paths`` with minilm on ONNX Runtime with ``t`` threads (model loaded before the clock);
* Ray: a fresh local Ray runtime with ``t`` CPUs, ``index_dataset`` with ``t`` workers x 1 thread (the clock
  includes the actors' start and model load: that is what a run costs).

For t in ``--threads`` (default 1 and 2) it prints the seconds, documents/s and the ratio Ray / in-process
(throughput; >1 is faster), and checks that both collections hold the same ids, texts and metadata with
vectors within cosine 0.9999.

    EMBEDSMITH_HOME=/tmp/b .venv/bin/python benchmarks/ray_ingest.py --store postgresql://user@host:port/db
    .venv/bin/python benchmarks/ray_ingest.py --store "$EMBEDSMITH_TEST_PG" --n 20 --shard 5   # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CRANFIELD = ROOT.parent / "shared" / "data" / "cranfield-beir-dev"
FALLBACK = ROOT / "tests" / "data" / "cranfield"


def write_shards(folder: Path, n: int, shard: int) -> int:
    src = CRANFIELD if (CRANFIELD / "corpus.jsonl").is_file() else FALLBACK
    docs = [d for d in (json.loads(x) for x in (src / "corpus.jsonl").read_text().splitlines()) if d["text"].strip()]
    docs = docs[:n]
    for k in range(0, len(docs), shard):
        (folder / f"shard{k // shard:05d}.jsonl").write_text(
            "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs[k : k + shard]))
    return len(docs)


def records(store: str, name: str) -> dict[str, tuple[Any, ...]]:
    from embedsmith import open_collection

    with open_collection(name, store=store, create=False) as c:
        return {r["id"]: (r["text"], r["metadata"], r["vector"]) for b in c.iter_records() for r in b}


def same(a: dict[str, tuple[Any, ...]], b: dict[str, tuple[Any, ...]]) -> tuple[bool, float]:
    if sorted(a) != sorted(b):
        return False, 0.0
    worst = 1.0
    ok = True
    for rid, (text, meta, vec) in a.items():
        ok &= b[rid][0] == text and b[rid][1] == meta
        worst = min(worst, float(np.dot(vec, b[rid][2]) / np.linalg.norm(vec) / np.linalg.norm(b[rid][2])))
    return ok and worst >= 0.9999, worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", default=os.environ.get("EMBEDSMITH_TEST_PG"), help="postgresql:// DSN")
    ap.add_argument("--n", type=int, default=1400, help="documents (Cranfield has 1,398 with text)")
    ap.add_argument("--shard", type=int, default=25, help="documents per JSONL shard")
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts to compare")
    ap.add_argument("--batch-size", type=int, default=2, help="shards per Ray encoding batch")
    args = ap.parse_args()
    if not args.store:
        ap.error("--store postgresql://... (or $EMBEDSMITH_TEST_PG) is required")
    import ray

    from embedsmith import load_encoder, open_collection
    from embedsmith.ingest import index_paths
    from embedsmith.ingest_ray import index_dataset
    from embedsmith.store import delete_collection

    tag = uuid.uuid4().hex[:8]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp)
        n = write_shards(corpus, args.n, args.shard)
        for t in (int(x) for x in args.threads.split(",")):
            local, remote = f"bench_local_{t}_{tag}", f"bench_ray_{t}_{tag}"
            enc = load_encoder("minilm", backend="onnx", device="cpu", threads=t)
            enc.encode(["warm up"], kind="document")
            with open_collection(local, store=args.store, encoder=enc) as c:
                start = time.perf_counter()
                index_paths(c, [corpus])
                local_s = time.perf_counter() - start
            ray.init(num_cpus=t, include_dashboard=False, object_store_memory=200 * 1024**2, configure_logging=False,
                     log_to_driver=False)
            try:
                start = time.perf_counter()
                report = index_dataset([corpus], store=args.store, collection=remote, encoder="minilm",
                                       num_workers=t, threads_per_worker=1, batch_size=args.batch_size)
                ray_s = time.perf_counter() - start
            finally:
                ray.shutdown()
            equal, worst = same(records(args.store, local), records(args.store, remote))
            rows.append((t, local_s, ray_s, report.chunks, equal, worst))
            for name in (local, remote):
                delete_collection(name, store=args.store)
    print(f"\n{n} Cranfield documents in {-(-n // args.shard)} shards of {args.shard}, minilm (ONNX), PostgreSQL\n")
    print("| threads | in-process s | docs/s | Ray (t workers x 1 thread) s | docs/s | Ray / in-process | chunks | "
          "records equal | min cosine |")
    print("|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    for t, local_s, ray_s, chunks, equal, worst in rows:
        print(f"| {t} | {local_s:.1f} | {n / local_s:.1f} | {ray_s:.1f} | {n / ray_s:.1f} | {local_s / ray_s:.2f}x "
              f"| {chunks} | {'yes' if equal else 'NO'} | {worst:.6f} |")
    if not all(r[4] for r in rows):
        raise SystemExit("records differ between Ray and in-process ingestion")


if __name__ == "__main__":
    main()
