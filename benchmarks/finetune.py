"""Fine-tuning experiments on the shared data: domain adaptation, a trained reranker, labels, STS.

Parts (``--parts``):
- ``cranfield``: the dev queries split into train/validation (``benchmarks/data/cranfield-split.json``,
  committed). minilm fine-tuned with title -> body pairs, inverse-cloze pseudo-queries and the training
  queries (MNRL, 96 tokens), with BM25 hard negatives and without. nDCG@10 on the validation queries before and after,
  each gain with a paired-bootstrap 95% confidence interval over queries.
- ``reranker``: a cross-encoder trained by ``finetune_reranker`` on the same training data reranks the top
  100 of minilm's dense search on the validation queries.
- ``banking``: contrastive (MNRL within labels) fine-tuning on 80% of Banking77; V-measure and kNN accuracy
  on the held-back 20%.
- ``sts`` / ``sts-cosine``: CoSENT / cosine-similarity loss on STSb train; Spearman on STSb dev.
- ``late-interaction``: a multi-vector (ColBERT-style) model trained from minilm by
  ``finetune_late_interaction`` on the ``cranfield`` training data (identity projection, 384-d token vectors,
  96 tokens); the top 100 of minilm's dense search for the validation queries reordered by MaxSim with the
  untrained start (minilm's own token vectors) and with the trained model, with paired-bootstrap intervals.

    python benchmarks/finetune.py --parts cranfield,reranker,banking,sts,sts-cosine
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SPLIT = Path(__file__).resolve().parent / "data" / "cranfield-split.json"


def bootstrap_ci(diffs: np.ndarray, n: int = 10000, seed: int = 0) -> tuple[float, float]:
    """95% paired-bootstrap interval of the mean per-query difference."""
    rng = np.random.default_rng(seed)
    means = diffs[rng.integers(0, len(diffs), size=(n, len(diffs)))].mean(1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def per_query_ndcg(task, run) -> np.ndarray:  # type: ignore[no-untyped-def]
    from embedsmith.evaluation.metrics import ndcg_at_k

    return np.array([ndcg_at_k(run.get(q, []), task.qrels[q], 10) for q in task.qrels])


def dense_run(task, encoder, k: int = 100):  # type: ignore[no-untyped-def]
    from embedsmith.evaluation import EmbeddingCache

    cache = EmbeddingCache()
    return task.rank(*task.encode(lambda texts, kind: cache.encode(encoder, texts, kind=kind)), k=k)


def cranfield_split() -> tuple[list[str], list[str]]:
    if not SPLIT.is_file():
        from embedsmith.evaluation import RetrievalTask

        qids = sorted(RetrievalTask.from_beir(DATA / "cranfield-beir-dev", split="dev").qrels, key=int)
        random.Random(13).shuffle(qids)
        cut = int(len(qids) * 0.6)
        SPLIT.parent.mkdir(exist_ok=True)
        SPLIT.write_text(json.dumps({"train": sorted(qids[:cut], key=int),
                                     "validation": sorted(qids[cut:], key=int)}, indent=1) + "\n")
    split = json.loads(SPLIT.read_text())
    return split["train"], split["validation"]


def cranfield_data(inverse: bool = True):  # type: ignore[no-untyped-def]
    from embedsmith.evaluation import RetrievalTask
    from embedsmith.training import TrainingData, inverse_cloze

    full = RetrievalTask.from_beir(DATA / "cranfield-beir-dev", split="dev")
    train_q, val_q = cranfield_split()
    val = RetrievalTask("cranfield-val", full.corpus, full.queries, {q: full.qrels[q] for q in val_q}, "validation")
    rows = [json.loads(x) for x in (DATA / "cranfield-beir-dev" / "corpus.jsonl").read_text().splitlines()]
    bodies = [r["text"] for r in rows if r.get("text", "").strip()]
    body = {r["_id"]: r["text"] for r in rows}
    data = TrainingData(source="cranfield titles -> bodies")
    for r in rows:
        if r.get("title", "").strip() and r.get("text", "").strip():
            data.add(r["title"], r["text"])
    if inverse:
        data.extend(inverse_cloze(bodies))
    queries = TrainingData(source="training queries")
    for q in train_q:
        for d, g in full.qrels[q].items():
            if g > 0:
                queries.add(full.queries[q], body[d])
    data.extend(queries)
    # Positives and mined negatives are all bodies without titles: if negatives had titles and positives
    # not, a model could learn the format instead of relevance (an early run did, see benchmarks/README.md).
    return data, val, bodies


def cranfield(runs: tuple[tuple[str, int], ...] = (("bm25", 0), ("none", 0)), tokens: int = 96) -> None:
    from embedsmith import load_encoder
    from embedsmith.training import finetune

    data, val, corpus = cranfield_data()
    base = per_query_ndcg(val, dense_run(val, load_encoder("minilm", backend="torch", device="cpu")))
    print(f"training pairs: {len(data)} ({data.source}); validation queries: {len(val.qrels)}")
    print("| run | nDCG@10 (validation) | gain | 95% CI (paired bootstrap) | train time (s) | steps |")
    print("|---|---:|---:|---|---:|---:|")
    print(f"| minilm, not fine-tuned | {base.mean():.4f} | | | | |")
    for negatives, skip in runs:
        out = Path(tempfile.mkdtemp(prefix=f"ft-cran-{negatives}-"))
        rep = finetune("minilm", data, out, hard_negatives=negatives, negatives_per_query=1, skip_top=skip,
                       corpus=corpus,
                       epochs=1, batch_size=32, lr=3e-5, max_seq_length=tokens, device="cpu")
        after = per_query_ndcg(val, dense_run(val, load_encoder(str(out), backend="torch", device="cpu")))
        lo, hi = bootstrap_ci(after - base)
        label = negatives + (f", skipping the top {skip}" if skip else "")
        label += f", {tokens} tokens" if tokens != 96 else ""
        print(f"| fine-tuned, hard negatives {label} | {after.mean():.4f} | {after.mean() - base.mean():+.4f} "
              f"| [{lo:+.4f}, {hi:+.4f}] | {rep.seconds:.0f} | {rep.steps} |", flush=True)


def reranker(steps: int = 480) -> None:
    from embedsmith import load_encoder
    from embedsmith.evaluation import RetrievalTask
    from embedsmith.rerankers import Reranker
    from embedsmith.search import reciprocal_rank_fusion
    from embedsmith.training import TrainingData, finetune_reranker

    full = RetrievalTask.from_beir(DATA / "cranfield-beir-dev", split="dev")
    train_q, val_q = cranfield_split()
    val = RetrievalTask("cranfield-val", full.corpus, full.queries, {q: full.qrels[q] for q in val_q}, "validation")
    rows = [json.loads(x) for x in (DATA / "cranfield-beir-dev" / "corpus.jsonl").read_text().splitlines()]
    # Queries are paired with documents as the store holds them (title + body), the text a reranker sees;
    # titles with bodies alone (a title paired with a text that starts with it teaches copying).
    data = TrainingData(source="cranfield titles -> bodies + training queries -> documents")
    for r in rows:
        if r.get("title", "").strip() and r.get("text", "").strip():
            data.add(r["title"], r["text"])
    for q in train_q:
        for d, g in full.qrels[q].items():
            if g > 0:
                data.add(full.queries[q], full.corpus[d])
    corpus = [t for t in full.corpus.values() if t.strip()]
    out = Path(tempfile.mkdtemp(prefix="ft-ce-"))
    rep = finetune_reranker("minilm", data, out, loss="listwise", hard_negatives="dense", negatives_per_query=3,
                            random_negatives=1, corpus=corpus, batch_size=16, lr=1e-4, head_lr=1e-3,
                            max_length=96, max_steps=steps, device="cpu")
    first = dense_run(val, load_encoder("minilm", backend="torch", device="cpu"))
    ce = Reranker(out, max_length=256)
    start = time.perf_counter()
    reranked, fused = {}, {}
    for q, ids in first.items():
        logits = ce.logits(val.queries[q], [val.corpus[d] for d in ids])
        reranked[q] = [ids[i] for i in np.argsort(-np.asarray(logits), kind="stable")]
        fused[q] = [d for d, _ in reciprocal_rank_fusion([ids, reranked[q]])]
    secs = time.perf_counter() - start
    a = per_query_ndcg(val, first)
    print(f"cross-encoder: {rep.examples} (query, text) pairs in {rep.steps} steps, {rep.seconds:.0f} s "
          f"({rep.loss}); reranking 100 candidates x {len(first)} queries took {secs:.0f} s")
    print("| stage | nDCG@10 (validation) | gain | 95% CI |")
    print("|---|---:|---:|---|")
    print(f"| dense minilm (first stage, top 100) | {a.mean():.4f} | | |")
    runs = (("+ trained cross-encoder", reranked), ("+ cross-encoder fused with the first stage (RRF)", fused))
    for name, run in runs:
        b = per_query_ndcg(val, run)
        lo, hi = bootstrap_ci(b - a)
        print(f"| {name} | {b.mean():.4f} | {b.mean() - a.mean():+.4f} | [{lo:+.4f}, {hi:+.4f}] |", flush=True)


def banking() -> None:
    from sklearn.model_selection import train_test_split

    from embedsmith import load_encoder
    from embedsmith.evaluation import ClusteringTask
    from embedsmith.evaluation.tasks import knn_predict, read_labelled
    from embedsmith.training import TrainingData, finetune

    texts, labels = read_labelled(DATA / "banking77" / "train.csv")
    tr_x, te_x, tr_y, te_y = train_test_split(texts, labels, test_size=0.2, random_state=42, stratify=labels)
    by: dict[str, list[str]] = {}
    for t, y in zip(tr_x, tr_y, strict=True):
        by.setdefault(y, []).append(t)
    rng = random.Random(42)
    data = TrainingData(source="banking77 train 80%: pairs within labels")
    for t, y in zip(tr_x, tr_y, strict=True):
        data.add(t, rng.choice([x for x in by[y] if x != t] or [t]))

    def scores(enc) -> tuple[float, float]:  # type: ignore[no-untyped-def]
        v_measure = ClusteringTask("banking-test", list(te_x), list(te_y)).evaluate(enc).main_score
        tr, te = enc.encode(list(tr_x)), enc.encode(list(te_x))
        pred = knn_predict(tr, list(tr_y), te, 5)
        return v_measure, float(np.mean([p == y for p, y in zip(pred, te_y, strict=True)]))

    before = scores(load_encoder("minilm", backend="torch", device="cpu"))
    out = Path(tempfile.mkdtemp(prefix="ft-bank-"))
    rep = finetune("minilm", data, out, epochs=1, batch_size=64, lr=3e-5, device="cpu")
    after = scores(load_encoder(str(out), backend="torch", device="cpu"))
    print(f"{len(data)} pairs, {rep.steps} steps, {rep.seconds:.0f} s")
    print("| held-back 20% | before | after |")
    print("|---|---:|---:|")
    print(f"| V-measure (k-means, k=77) | {before[0]:.4f} | {after[0]:.4f} |")
    print(f"| kNN accuracy (k=5) | {before[1]:.4f} | {after[1]:.4f} |")


def sts(loss: str = "cosent", lr: float = 2e-5) -> None:
    from embedsmith.evaluation import STSTask
    from embedsmith.training import finetune, load_training_data

    data = load_training_data(DATA / "stsb" / "stsb-en-train.csv")
    out = Path(tempfile.mkdtemp(prefix="ft-sts-"))
    rep = finetune("minilm", data, out, loss=loss, epochs=1, batch_size=32, lr=lr, device="cpu",
                   eval_task=STSTask.from_file(DATA / "stsb" / "stsb-en-dev.csv"))
    print(f"{len(data)} pairs, {rep.steps} steps, {rep.seconds:.0f} s")
    print("| STSb dev Spearman (cosine) | before | after |")
    print("|---|---:|---:|")
    print(f"| minilm + {loss} loss on STSb train, lr {lr:g} | {rep.before['main_score']:.4f} "
          f"| {rep.after['main_score']:.4f} |")


def late_interaction(tokens: int = 96, lr: float = 3e-5, scale: float = 1.0) -> None:
    from embedsmith import load_encoder
    from embedsmith.training import finetune_late_interaction

    data, val, _ = cranfield_data()
    print(f"training pairs: {len(data)} ({data.source}); validation queries: {len(val.qrels)}")
    out = Path(tempfile.mkdtemp(prefix="ft-cran-late-"))
    rep = finetune_late_interaction("minilm", data, out, epochs=1, batch_size=32, lr=lr, scale=scale,
                                    max_seq_length=tokens, eval_task=val, candidates=100, device="cpu",
                                    first_stage=load_encoder("minilm", backend="onnx", device="cpu"))
    print(f"{rep.steps} steps, {rep.seconds:.0f} s of training; model in {out}")
    print("| Cranfield validation (46 queries) | nDCG@10 | MRR@10 | R@100 |")
    print("|---|---:|---:|---:|")
    for label, scores in (("dense minilm, top 100", rep.first_stage),
                          ("> MaxSim, untrained (minilm's token vectors)", rep.before),
                          ("> MaxSim, fine-tuned", rep.after)):
        print(f"| {label} | {scores['ndcg_at_10']:.4f} | {scores['mrr_at_10']:.4f} | {scores['recall_at_100']:.4f} |")
    for name, rows in (("fine-tuned vs untrained", rep.significance),
                       ("fine-tuned vs first stage", rep.first_stage_significance)):
        for c in rows.values():
            print(f"- {name}, {c.metric}: {c.diff:+.4f} [{c.ci_low:+.4f}, {c.ci_high:+.4f}], p = {c.p_value:.4f} "
                  f"({c.verdict})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="cranfield,reranker,banking,sts,sts-cosine")
    ap.add_argument("--reranker-steps", type=int, default=480, help="training steps of the reranker part")
    args = ap.parse_args()
    parts = {"cranfield": cranfield, "reranker": lambda: reranker(args.reranker_steps), "banking": banking, "sts": sts,
             "cranfield-bm25": lambda: cranfield((("bm25", 0),)),
             "cranfield-bm25-skip3": lambda: cranfield((("bm25", 3),)),
             "cranfield-bm25-skip3-80": lambda: cranfield((("bm25", 3),), tokens=80),
             "late-interaction": late_interaction,
             "sts-cosine": lambda: sts("cosine"), "sts-cosent-low-lr": lambda: sts("cosent", 5e-6)}
    for name in args.parts.split(","):
        print(f"\n## {name}\n", flush=True)
        start = time.perf_counter()
        parts[name.strip()]()
        print(f"\n({time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
