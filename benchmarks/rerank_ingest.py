"""Reranking 100 candidates, and ingestion end to end against pure encoding of the same chunks.

Reranking: one Cranfield query against 100 Cranfield abstracts, with a cross-encoder made from the MiniLM
folder (an untrained head: speed does not depend on it). Configurations: sentence-transformers'
``CrossEncoder.predict`` (the peer), embedsmith's exact ONNX and int8 graphs, and with ``--old-src`` the
same two from an earlier checkout (the unfused graph, 4,096-token batches) run in its own process. Each row
is the median of ``--repeats`` calls after a warm-up; tokens are the query+document pairs as truncated to
the model's max length.

Ingestion: ``index_paths`` of ``--docs`` Cranfield documents (one JSONL file) into a fresh collection,
against ``encode`` of exactly the chunk texts it stored, with the same encoder, in the same process.

    python benchmarks/rerank_ingest.py --threads 2
    python benchmarks/rerank_ingest.py --threads 2 --old-src /tmp/old/src   # git worktree add /tmp/old 5d3dcd5
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CRANFIELD = ROOT.parent / "shared" / "data" / "cranfield-beir-dev"
FALLBACK = ROOT / "tests" / "data" / "cranfield"


def data() -> tuple[str, list[dict[str, str]]]:
    folder = CRANFIELD if (CRANFIELD / "corpus.jsonl").is_file() else FALLBACK
    docs = [d for d in (json.loads(x) for x in (folder / "corpus.jsonl").read_text().splitlines()) if d["text"].strip()]
    query = json.loads((folder / "queries.jsonl").read_text().splitlines()[0])["text"]
    return query, docs


def timed(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def rerank_worker(folder: str, backend: str, threads: int, repeats: int) -> None:
    """Print {"s": seconds per 100-candidate call, "tokens": tokens run} for one backend of this checkout."""
    from embedsmith import Reranker

    query, docs = data()
    texts = [d["text"] for d in docs if d["text"].strip()][:100]
    r = Reranker(folder, backend=backend, threads=threads)
    tokens = sum(len(e.ids) for e in r._tokenizer.encode_batch([(query, t) for t in texts]))
    print(json.dumps({"s": timed(lambda: r.logits(query, texts), repeats), "tokens": tokens,
                      "logits": r.logits(query, texts).tolist()}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--docs", type=int, default=600)
    ap.add_argument("--old-src", help="src folder of an earlier checkout, for the 'before' rows")
    ap.add_argument("--worker", nargs=2, metavar=("FOLDER", "BACKEND"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        rerank_worker(*args.worker, args.threads, args.repeats)
        return
    import numpy as np
    import torch
    from sentence_transformers import CrossEncoder

    from embedsmith.encoders.registry import _minilm_folder

    torch.set_num_threads(args.threads)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    work = Path(tempfile.mkdtemp(prefix="embedsmith-rerank-"))
    try:
        folder = work / "ce"
        CrossEncoder(str(_minilm_folder()), num_labels=1, device="cpu").save(str(folder))
        query, docs = data()
        texts = [d["text"] for d in docs if d["text"].strip()][:100]
        peer = CrossEncoder(str(folder), device="cpu", activation_fn=torch.nn.Identity())
        peer_s = timed(lambda: peer.predict([(query, t) for t in texts], batch_size=32), args.repeats)
        peer_logits = np.asarray(peer.predict([(query, t) for t in texts], batch_size=32)).reshape(-1)
        rows = [("peer: sentence-transformers CrossEncoder.predict", peer_s, None, peer_logits)]
        runs = [("embedsmith onnx exact (fused)", None, "onnx"), ("embedsmith onnx int8 (fused)", None, "onnx-int8")]
        if args.old_src:
            runs = [("before: onnx exact (unfused)", args.old_src, "onnx"),
                    ("before: onnx int8 (unfused)", args.old_src, "onnx-int8"), *runs]
        tokens = 0
        for name, src, backend in runs:
            run_env = dict(env, PYTHONPATH=src) if src else env
            out = subprocess.run([sys.executable, __file__, "--threads", str(args.threads), "--repeats",
                                  str(args.repeats), "--worker", str(folder), backend], env=run_env, check=True,
                                 capture_output=True, text=True).stdout
            got = json.loads(out.strip().splitlines()[-1])
            tokens = got["tokens"]
            rows.append((name, got["s"], got["tokens"], np.asarray(got["logits"])))
        exact_before = next((s for n, s, _, _ in rows if n.startswith("before: onnx exact")), None)
        print(f"\nReranking 100 Cranfield abstracts for one query, {args.threads} threads, median of "
              f"{args.repeats}; {tokens:,} tokens\n")
        print("| configuration | s per call | tokens/s | x peer | x before exact | max abs logit diff vs peer |")
        print("|---|---:|---:|---:|---:|---:|")
        for name, s, _, logits in rows:
            vs = f"{exact_before / s:.2f}" if exact_before else "-"
            print(f"| {name} | {s:.3f} | {tokens / s:,.0f} | {peer_s / s:.2f} | {vs} | "
                  f"{float(np.abs(logits - peer_logits).max()):.2e} |")

        from embedsmith import index_paths, load_encoder, open_collection

        enc = load_encoder("minilm", backend="onnx", threads=args.threads)
        corpus = work / "corpus.jsonl"
        corpus.write_text("".join(json.dumps({"_id": d["_id"], "title": d.get("title", ""), "text": d["text"]}) + "\n"
                                  for d in docs[: args.docs]))
        enc.encode([d["text"] for d in docs[:32]])  # warm
        with open_collection("kb", store=work / "store", encoder=enc) as c:
            t = time.perf_counter()
            report = index_paths(c, [corpus])
            index_s = time.perf_counter() - t
            chunks = [t for b in c.export_records(batch=10_000) for t, e in zip(b.texts, b.index_texts, strict=True)
                      for t in [e if e is not None else t]]
        t = time.perf_counter()
        enc.encode(chunks, kind="document")
        encode_s = time.perf_counter() - t
        print(f"\nIngestion of {args.docs} Cranfield documents ({report.chunks} chunks), {args.threads} threads\n")
        print("| step | s | chunks/s | x pure encoding |")
        print("|---|---:|---:|---:|")
        print(f"| encode the stored chunk texts | {encode_s:.2f} | {len(chunks) / encode_s:,.1f} | 1.00 |")
        print(f"| index_paths end to end | {index_s:.2f} | {len(chunks) / index_s:,.1f} | {encode_s / index_s:.2f} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
