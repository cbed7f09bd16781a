"""RAG-ready results on Cranfield dev: redundancy with and without shaping, context recall of packing against
naive concatenation, and the calibration error of calibrated relevance on held-out queries.

The 1,398 non-empty Cranfield abstracts (with titles) are chunked by ``index_paths`` (``--chunk-tokens``
tokens, ``--overlap`` overlap: overlapping windows are what dedup is for) into one MiniLM collection.

- Redundancy of the top 10 chunks: mean pairwise cosine of their vectors and the share of pairs at cosine
  >= 0.95; nDCG@10 over documents (each document at its best chunk's rank) beside it.
- Context recall at 1k / 2k / 4k tokens: the share of a query's judged-relevant documents whose text reaches
  the context, for ``Collection.context`` against the top chunks concatenated in rank order until the budget
  (the same tokens: MiniLM's, citations counted for ours).
- Calibration: ``calibrate`` fitted on half of the queries (seeded split), ECE (10 bins) of the other half's
  top-20 hits; and how often ``min_relevance=0.5`` leaves a held-out query with no hit.

    python benchmarks/rag.py
"""

from __future__ import annotations

import argparse
import random
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "cranfield-beir-dev"
FALLBACK = ROOT / "tests" / "data" / "cranfield"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chunk-tokens", type=int, default=96)
    ap.add_argument("--overlap", type=int, default=32)
    args = ap.parse_args()
    from embedsmith import index_paths, load_encoder, open_collection
    from embedsmith.calibration import expected_calibration_error, judged_hits, stored
    from embedsmith.evaluation.metrics import ndcg_at_k
    from embedsmith.io import read_beir_queries, read_qrels

    folder = DATA if (DATA / "corpus.jsonl").is_file() else FALLBACK
    problems: Counter[str] = Counter()
    queries = read_beir_queries(folder / "queries.jsonl", problems)
    qrels: dict[str, dict[str, int]] = {}
    for q, d, g in read_qrels(next((folder / "qrels").glob("*.tsv")), problems):
        qrels.setdefault(q, {})[d] = g
    queries = {q: t for q, t in queries.items() if any(g > 0 for g in qrels.get(q, {}).values())}
    enc = load_encoder("minilm", backend="onnx")
    work = Path(tempfile.mkdtemp(prefix="embedsmith-rag-"))
    try:
        t = time.perf_counter()
        coll = open_collection("cran", store=work, encoder=enc)
        report = index_paths(coll, [folder / "corpus.jsonl"], max_tokens=args.chunk_tokens, overlap=args.overlap)
        print(f"{report.documents} documents, {report.chunks} chunks of {args.chunk_tokens} tokens "
              f"(overlap {args.overlap}) in {time.perf_counter() - t:.0f} s; {len(queries)} judged queries\n")

        def doc_ranking(hits) -> list[str]:  # type: ignore[no-untyped-def]
            return list(dict.fromkeys(h.metadata.get("doc_id", h.id) for h in hits))

        print("| mode | shaping | mean pairwise cosine, top 10 | near-duplicate pairs (>= 0.95) | nDCG@10 (docs) |")
        print("|---|---|---:|---:|---:|")
        for mode in ("dense", "hybrid"):
            for label, opts in (("none", {}), ("dedup", {"dedup": True}), ("diversity 0.3", {"diversity": 0.3}),
                                ("dedup + diversity 0.3", {"dedup": True, "diversity": 0.3})):
                cos, dup, nd = [], [], []
                for q, text in queries.items():
                    hits = coll.search(text, k=10, mode=mode, **opts)
                    vecs = np.stack([r["vector"] for r in coll.get(hits.ids, include_vectors=True)])
                    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
                    sim = vecs @ vecs.T
                    iu = np.triu_indices(len(vecs), 1)
                    cos.append(float(sim[iu].mean()))
                    dup.append(float((sim[iu] >= 0.95).mean()))
                    wide = coll.search(text, k=40, mode=mode, **opts)  # enough chunks for 10 documents
                    nd.append(ndcg_at_k(doc_ranking(wide), qrels[q], 10))
                print(f"| {mode} | {label} | {np.mean(cos):.3f} | {np.mean(dup):.3f} | {np.mean(nd):.4f} |")

        count = lambda s: len(enc.token_spans(s))  # noqa: E731
        print("\n| budget (tokens) | context recall, Collection.context | naive top-chunk concatenation |")
        print("|---:|---:|---:|")
        for budget in (1000, 2000, 4000):
            ours, naive = [], []
            for q, text in queries.items():
                relevant = {d for d, g in qrels[q].items() if g > 0}
                ctx = coll.context(text, budget_tokens=budget)
                ours.append(len(relevant & {p.doc_id for p in ctx.passages}) / len(relevant))
                used, docs = 0, set()
                for h in coll.search(text, k=200):
                    n = count((h.text or "") + "\n\n")
                    if used + n > budget:
                        break
                    used += n
                    docs.add(h.metadata.get("doc_id", h.id))
                naive.append(len(relevant & docs) / len(relevant))
            print(f"| {budget:,} | {np.mean(ours):.3f} | {np.mean(naive):.3f} |")

        ids = sorted(queries)
        random.Random(0).shuffle(ids)
        fit_q, held = ids[: len(ids) // 2], ids[len(ids) // 2 :]
        print("\n| mode | fitted on | ECE on held-out queries (top 20) | empty at min_relevance 0.5: held-out "
              "queries with no judged doc in their top 100 | the same, of those with one in their top 20 |")
        print("|---|---|---:|---:|---:|")
        for mode in ("dense", "hybrid"):
            for source in ("qrels", "pseudo"):
                if source == "qrels":
                    coll.calibrate(queries={q: queries[q] for q in fit_q}, qrels=qrels, mode=mode)
                else:
                    coll.calibrate(mode=mode, pseudo=300)
                s, y, _ = judged_hits(coll, {q: queries[q] for q in held}, qrels, mode=mode, depth=20)
                cal = stored(coll, mode, False)
                if cal is None:
                    raise SystemExit("calibration was not stored")
                ece = expected_calibration_error(cal(s), y)
                none100, some20 = [], []
                for q in held:
                    top = [h.metadata.get("doc_id", h.id) for h in coll.search(queries[q], k=100, mode=mode)]
                    judged = {d for d, g in qrels[q].items() if g > 0}
                    empty = not coll.search(queries[q], k=20, mode=mode, min_relevance=0.5).ids
                    if not judged & set(top):
                        none100.append(empty)
                    if judged & set(top[:20]):
                        some20.append(empty)
                fitted = f"{len(fit_q)} judged queries" if source == "qrels" else "300 pseudo-queries"
                print(f"| {mode} | {fitted} | {ece:.3f} | {sum(none100)}/{len(none100)} | "
                      f"{sum(some20)}/{len(some20)} |")
        coll.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
