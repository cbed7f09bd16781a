"""Evaluation speed and scores on the shared data, beside sentence-transformers' own evaluators.

Parts (``--parts``, comma-separated):
- ``sts``: STSb dev (1,500 pairs) with minilm (ONNX): our time, the share spent encoding, and
  sentence-transformers' ``EmbeddingSimilarityEvaluator`` (torch) on the same pairs in the same run.
- ``retrieval``: Cranfield dev end to end (1,398 abstracts, 112 queries), ours against
  ``InformationRetrievalEvaluator``.
- ``banking``: Banking77 classification (MTEB protocol, own 80/20 stratified split) and clustering.
- ``bitext``: Tatoeba deu/fra/spa -> eng for minilm, e5-small-multilingual and use-multilingual.
- ``tradeoff``: the dims x precision table on Cranfield dev (markdown printed).
- ``xsts``: cross-lingual STS: STSb dev English sentence1 against German sentence2 of the same rows.
- ``cluster``: clustering all 10,003 Banking77 texts (encode + k-means k=77 + describe), with the share
  spent encoding, beside the hand-made peer (sentence-transformers encode + scikit-learn KMeans).

    python benchmarks/evaluation.py --parts sts,retrieval,banking,bitext,tradeoff,xsts,cluster
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def sts() -> None:
    from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator

    from embedsmith import load_encoder
    from embedsmith.evaluation import STSTask

    task = STSTask.from_file(DATA / "stsb" / "stsb-en-dev.csv")
    enc = load_encoder("minilm", backend="onnx")
    enc.encode(["warm up"])
    r = task.evaluate(enc)
    torch_enc = load_encoder("minilm", backend="torch", device="cpu")
    ev = EmbeddingSimilarityEvaluator(task.sentences1, task.sentences2, task.scores, write_csv=False)
    start = time.perf_counter()
    ref = ev(torch_enc.model)
    peer = time.perf_counter() - start
    print("| task | ours (s) | encoding share | peer (s) | speed vs peer | ours main | peer main |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print(f"| STSb dev, minilm | {r.evaluation_time:.2f} | {r.encode_time / r.evaluation_time:.1%} | {peer:.2f} | "
          f"{peer / r.evaluation_time:.2f}x | {r.main_score:.4f} | {ref['spearman_cosine']:.4f} |")


def retrieval() -> None:
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    from embedsmith import load_encoder
    from embedsmith.evaluation import RetrievalTask

    start = time.perf_counter()
    task = RetrievalTask.from_beir(DATA / "cranfield-beir-dev", split="dev")
    enc = load_encoder("minilm", backend="onnx")
    r = task.evaluate(enc)
    ours = time.perf_counter() - start
    torch_enc = load_encoder("minilm", backend="torch", device="cpu")
    ev = InformationRetrievalEvaluator(
        {q: task.queries[q] for q in task.qrels}, task.corpus,
        {q: {d for d, g in rel.items() if g > 0} for q, rel in task.qrels.items()},
        show_progress_bar=False, write_csv=False)
    start = time.perf_counter()
    ref = ev(torch_enc.model)
    peer = time.perf_counter() - start
    print("| task | ours end to end (s) | encoding share | peer (s) | speed vs peer | nDCG@10 | MRR@10 | R@100 | "
          "peer MRR@10 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| Cranfield dev, minilm | {ours:.2f} | {r.encode_time / r.evaluation_time:.1%} | {peer:.2f} | "
          f"{peer / ours:.2f}x | {r.scores['ndcg_at_10']:.4f} | {r.scores['mrr_at_10']:.4f} | "
          f"{r.scores['recall_at_100']:.4f} | {ref['cosine_mrr@10']:.4f} |")
    print(f"problems: {r.problems}")


def banking() -> None:
    from embedsmith import load_encoder
    from embedsmith.evaluation import ClassificationTask, ClusteringTask, EmbeddingCache

    path = DATA / "banking77" / "train.csv"
    cls, clu = ClassificationTask.from_file(path), ClusteringTask.from_file(path)
    print("| model | LR accuracy (MTEB protocol) | macro F1 | kNN accuracy | V-measure | time (s) | encoding share |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for alias in ("minilm", "mpnet"):
        enc = load_encoder(alias)
        cache = EmbeddingCache()
        a = cls.evaluate(enc, cache=cache)
        b = clu.evaluate(enc, cache=cache)
        total = a.evaluation_time + b.evaluation_time
        print(f"| {alias} | {a.scores['accuracy']:.4f} | {a.scores['f1']:.4f} | {a.scores['knn_accuracy']:.4f} | "
              f"{b.scores['v_measure']:.4f} | {total:.1f} | {(a.encode_time + b.encode_time) / total:.1%} |")


def bitext() -> None:
    from embedsmith import load_encoder
    from embedsmith.evaluation import BitextTask

    langs = ("deu", "fra", "spa")
    print("| model | " + " | ".join(f"{lang}->eng F1 | eng->{lang} F1" for lang in langs) + " |")
    print("|---|" + "---:|---:|" * len(langs))
    for alias in ("minilm", "e5-small-multilingual", "use-multilingual"):
        enc = load_encoder(alias)
        cells = []
        for lang in langs:
            base = DATA / "tatoeba" / f"tatoeba.{lang}-eng"
            r = BitextTask.from_files(f"{base}.{lang}", f"{base}.eng").evaluate(enc)
            cells += [f"{r.scores['f1']:.4f}", f"{r.scores['reverse_f1']:.4f}"]
        print(f"| {alias} | " + " | ".join(cells) + " |")


def tradeoff() -> None:
    from embedsmith import load_encoder
    from embedsmith.evaluation import RetrievalTask
    from embedsmith.evaluation.tradeoff import to_markdown
    from embedsmith.evaluation.tradeoff import tradeoff as run

    task = RetrievalTask.from_beir(DATA / "cranfield-beir-dev", split="dev")
    rows = run(load_encoder("minilm", backend="onnx"), task)
    print(to_markdown(rows, title="minilm on Cranfield dev", metric="nDCG@10", n_docs=len(task.corpus)))


def xsts() -> None:
    from embedsmith import load_encoder
    from embedsmith.evaluation import STSTask

    en = STSTask.from_file(DATA / "stsb" / "stsb-en-dev.csv")
    de = STSTask.from_file(DATA / "stsb" / "stsb-de-dev.csv")
    print("| model | en-en Spearman | en-de Spearman (sentence1 en, sentence2 de) |")
    print("|---|---:|---:|")
    for alias in ("minilm", "mpnet", "e5-small-multilingual", "use-multilingual"):
        enc = load_encoder(alias)
        cross = STSTask("stsb-en-de-dev", en.sentences1, de.sentences2, en.scores, "dev")
        print(f"| {alias} | {en.evaluate(enc).main_score:.4f} | {cross.evaluate(enc).main_score:.4f} |")


def cluster() -> None:
    import warnings

    from sklearn.cluster import KMeans
    from sklearn.metrics import v_measure_score

    from embedsmith import load_encoder
    from embedsmith.analysis import cluster_texts
    from embedsmith.evaluation.tasks import read_labelled

    texts, labels = read_labelled(DATA / "banking77" / "train.csv")
    enc = load_encoder("minilm", backend="onnx")
    enc.encode(["warm up"])
    start = time.perf_counter()
    vectors = enc.encode(texts, kind="document")
    encoded = time.perf_counter() - start
    result = cluster_texts(texts, vectors=vectors, k=77)
    ours = time.perf_counter() - start
    torch_enc = load_encoder("minilm", backend="torch", device="cpu")
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peer_vectors = torch_enc.model.encode(texts, batch_size=32)
    peer_labels = KMeans(n_clusters=77, n_init="auto", random_state=42).fit_predict(peer_vectors)
    peer = time.perf_counter() - start
    print("| texts | ours: encode + cluster + describe (s) | encoding share | peer: ST encode + KMeans (s) | "
          "speed vs peer | V-measure ours | V-measure peer |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {len(texts)} | {ours:.1f} | {encoded / ours:.1%} | {peer:.1f} | {peer / ours:.2f}x | "
          f"{v_measure_score(labels, result.labels):.4f} | {v_measure_score(labels, peer_labels):.4f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="sts,retrieval,banking,bitext,tradeoff,xsts,cluster")
    args = ap.parse_args()
    parts = {"sts": sts, "retrieval": retrieval, "banking": banking, "bitext": bitext, "tradeoff": tradeoff,
             "xsts": xsts, "cluster": cluster}
    for name in args.parts.split(","):
        print(f"\n## {name}\n")
        parts[name.strip()]()


if __name__ == "__main__":
    main()
