"""Static (model2vec) MiniLM against MiniLM itself (ONNX fp32): what distillation costs and what it loses.

One run: distils all-MiniLM-L6-v2 with its full vocabulary (timed), fits two more copies to a corpus
(Cranfield's abstracts, never its queries; STSb's train sentences, never dev), then scores all four models on
STSb dev (Spearman of cosines) and Cranfield dev (dense retrieval over corpus.jsonl, nDCG@10), and times
``encode`` of the same STSb sentences for the teacher and the static model in the same process.

    PYTHONPATH=src python benchmarks/static.py --threads 2
"""

from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def unique_sentences(path: Path) -> list[str]:
    seen: dict[str, None] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.reader(f):
            seen.setdefault(row[0], None)
            seen.setdefault(row[1], None)
    return list(seen)


def speed(encoder: Any, texts: list[str], repeats: int) -> float:
    """Texts per second: median of ``repeats`` timed ``encode`` calls after a warm-up."""
    encoder.encode(texts[:64])
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        encoder.encode(texts)
        times.append(time.perf_counter() - t0)
    return len(texts) / statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stsb", type=Path, default=SHARED / "stsb", help="folder with stsb-en-{train,dev}.csv")
    ap.add_argument("--cranfield", type=Path, default=SHARED / "cranfield-beir-dev", help="BEIR folder (dev qrels)")
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads of the teacher")
    ap.add_argument("--n", type=int, default=2000, help="STSb dev sentences timed")
    ap.add_argument("--repeats", type=int, default=3, help="timed encode calls (median)")
    ap.add_argument("--keep", type=Path, default=None, help="write the static models here (default: a temp dir)")
    args = ap.parse_args()

    from embedsmith import load_encoder
    from embedsmith.encoders.static import distill
    from embedsmith.evaluation import RetrievalTask, STSTask
    from embedsmith.io import read_beir_corpus

    warnings.simplefilter("ignore")  # truncation of long abstracts (the teacher reads 256 tokens) is expected
    sts = STSTask.from_file(args.stsb / "stsb-en-dev.csv")
    retrieval = RetrievalTask.from_beir(args.cranfield, split="dev")
    cranfield_texts = list(read_beir_corpus(args.cranfield / "corpus.jsonl", Counter()).values())
    stsb_train = unique_sentences(args.stsb / "stsb-en-train.csv")
    timed = unique_sentences(args.stsb / "stsb-en-dev.csv")[: args.n]

    teacher = load_encoder("minilm", backend="onnx", threads=args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        made: dict[str, tuple[Path, float]] = {}
        for key, corpus in (("static", None), ("cranfield", cranfield_texts), ("stsb", stsb_train)):
            t0 = time.perf_counter()
            path = distill("minilm", root / f"minilm-static-{key}", corpus=corpus)
            made[key] = (path, time.perf_counter() - t0)
            print(f"made {path} in {made[key][1]:.1f} s", flush=True)
        rows: list[tuple[str, Any, float | None, int]] = [("MiniLM-L6 ONNX fp32 (teacher)", teacher, None, 0)]
        labels = {"static": "static, full vocabulary (distilled)",
                  "cranfield": f"static fitted to Cranfield's {len(cranfield_texts):,} abstracts",
                  "stsb": f"static fitted to STSb train's {len(stsb_train):,} sentences"}
        for key, (path, seconds) in made.items():
            enc = load_encoder(f"static:{path}")
            rows.append((labels[key], enc, seconds, enc.vocab_size))

        results = []
        for label, enc, seconds, vocab in rows:
            s = sts.evaluate(enc).main_score
            r = retrieval.evaluate(enc).main_score
            results.append((label, enc, seconds, vocab, s, r, speed(enc, timed, args.repeats)))
            print(f"scored {label}", flush=True)

    t_sts, t_ndcg, t_speed = results[0][4:]
    p_sts, p_ndcg = results[1][4], results[1][5]
    print(f"\nSTSb dev: {len(sts.scores):,} pairs; Cranfield dev: {len(retrieval.qrels)} queries over "
          f"{len(retrieval.corpus):,} abstracts; speed: {len(timed):,} STSb dev sentences, teacher on "
          f"{args.threads} threads, median of {args.repeats}\n")
    print("| model | dim | STSb Spearman | % of teacher | Cranfield nDCG@10 | % of teacher | sentences/s | "
          "x teacher | made in s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, enc, seconds, _vocab, s, r, sp in results:
        made_in = f"{seconds:.0f}" if seconds is not None else "-"
        print(f"| {label} | {enc.dim} | {s:.4f} | {100 * s / t_sts:.1f} | {r:.4f} | {100 * r / t_ndcg:.1f} | "
              f"{sp:,.0f} | {sp / t_speed:.1f} | {made_in} |")
    print()
    for label, _enc, _sec, _vocab, s, r, _sp in results[2:]:
        gap_s = (s - p_sts) / (t_sts - p_sts) if t_sts != p_sts else float("nan")
        gap_r = (r - p_ndcg) / (t_ndcg - p_ndcg) if t_ndcg != p_ndcg else float("nan")
        print(f"- {label}: recovers {100 * gap_s:.0f}% of the static model's STSb gap to the teacher and "
              f"{100 * gap_r:.0f}% of its Cranfield gap (negative: worse than the plain static model)")
    print(f"- full-vocabulary distillation ({results[1][3]:,} tokens): {results[1][2]:.0f} s, imports included")


if __name__ == "__main__":
    main()
