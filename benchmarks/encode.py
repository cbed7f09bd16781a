"""Encoding throughput: embedsmith backends against sentence-transformers' own ``encode`` (the peer).

Each configuration runs in a fresh subprocess (so peak RSS is its own), on the same sentences, with the
same thread count; the table reports the median of ``--repeats`` timed runs after one warm-up, and the
whole process (start, imports, model load, one encode of every text, exit) as the parent saw it.

    python benchmarks/encode.py --n 2000 --threads 2 --repeats 3
    python benchmarks/encode.py --long --n 1000 --threads 2 --repeats 1

``--long``: Cranfield abstracts with their titles (100-256 tokens; ../shared/data/cranfield-beir-dev) instead
of STSb sentences. The sgemm line measures this machine's float32 matrix-multiply rate at MiniLM's shapes,
and the tokens/s that rate allows (21.2 MFLOP per token for the six layers' projections and feed-forward,
plus attention at the texts' mean length), so nobody chases past the machine's limit.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "stsb" / "stsb-en-dev.csv"
FALLBACK = Path(__file__).resolve().parents[1] / "tests" / "data" / "stsb-en-dev-sample.csv"
CRANFIELD = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cranfield-beir-dev" / "corpus.jsonl"
CRANFIELD_FALLBACK = Path(__file__).resolve().parents[1] / "tests" / "data" / "cranfield" / "corpus.jsonl"

CONFIGS = {
    "peer: sentence-transformers encode": ("peer", None),
    "embedsmith torch": ("torch", None),
    "embedsmith onnx fp32": ("onnx", None),
    "embedsmith onnx int8": ("onnx-int8", None),
    "embedsmith onnx int8 + int8 output": ("onnx-int8", "int8"),
    "embedsmith onnx fp32 + binary output": ("onnx", "binary"),
}


def load_texts(n: int, long: bool) -> list[str]:
    if not long:
        return load_sentences(n)
    path = CRANFIELD if CRANFIELD.is_file() else CRANFIELD_FALLBACK
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    texts = [f"{r['title']}\n{r['text']}".strip() for r in rows]
    return [t for t in texts if t][:n]  # a few Cranfield records are empty


def sgemm_ceiling(threads: int, mean_tokens: float) -> tuple[float, float]:
    """(GFLOP/s of float32 matmul at MiniLM's shapes, the tokens/s that allows for MiniLM at this length)."""
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.normal(size=(1024, 384)).astype(np.float32)
    w1, w2 = rng.normal(size=(384, 1536)).astype(np.float32), rng.normal(size=(1536, 384)).astype(np.float32)
    best = 0.0
    for _ in range(20):
        t = time.perf_counter()
        for _ in range(10):
            (a @ w1) @ w2
        dt = time.perf_counter() - t
        best = max(best, 10 * 2 * 2 * 1024 * 384 * 1536 / dt / 1e9)
    per_token = 21.2e6 + 6 * 2 * 2 * mean_tokens * 384  # projections + FFN, and QK^T + AV per layer
    return best, best * 1e9 / per_token


def load_sentences(n: int) -> list[str]:
    path = DATA if DATA.is_file() else FALLBACK
    seen: dict[str, None] = {}
    with open(path, newline="") as f:
        for row in csv.reader(f):
            seen.setdefault(row[0], None)
            seen.setdefault(row[1], None)
    return list(seen)[:n]


def worker(backend: str, precision: str | None, n: int, threads: int, repeats: int, batch: int, out: str,
           long: bool = False) -> None:
    import numpy as np

    texts = load_texts(n, long)
    t0 = time.perf_counter()
    if backend == "peer":
        import torch
        from sentence_transformers import SentenceTransformer

        from embedsmith.encoders.registry import _minilm_folder

        torch.set_num_threads(threads)
        model = SentenceTransformer(str(_minilm_folder()), device="cpu")

        def run() -> np.ndarray:
            return model.encode(texts, batch_size=batch, convert_to_numpy=True, normalize_embeddings=True)

        tokens = sum(len(x) for x in model.tokenizer(texts, truncation=True, max_length=256)["input_ids"])
    else:
        import embedsmith

        enc = embedsmith.load_encoder("minilm", backend=backend, device="cpu", threads=threads)

        def run() -> np.ndarray:
            return enc.encode(texts, batch_size=batch if backend == "torch" else None)

        tokens = sum(min(x, enc.max_tokens) for x in enc.count_tokens(texts))
    load_s = time.perf_counter() - t0
    vectors = run()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        vectors = run()
        times.append(time.perf_counter() - t)
    if precision:
        t = time.perf_counter()
        enc.encode(texts, precision=precision)
        times.append(time.perf_counter() - t)
        times = times[-1:] + times[:-1]
    import resource

    np.save(out + ".npy", vectors.astype(np.float32))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(out + ".json").write_text(json.dumps({"times": times, "tokens": tokens, "rss_mb": rss, "load_s": load_s}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32, help="peer and torch batch size")
    ap.add_argument("--only", nargs="*", help="subset of configuration names")
    ap.add_argument("--long", action="store_true", help="Cranfield abstracts with titles instead of STSb sentences")
    ap.add_argument("--worker", nargs=3, metavar=("BACKEND", "PRECISION", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        b, p, o = args.worker
        worker(b, None if p == "-" else p, args.n, args.threads, args.repeats, args.batch_size, o, args.long)
        return
    import numpy as np

    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"embedsmith-bench-{os.getpid()}"
    tmp.mkdir(exist_ok=True)
    results = {}
    for name, (backend, precision) in CONFIGS.items():
        if args.only and name not in args.only:
            continue
        out = str(tmp / backend.replace(" ", "_")) + (precision or "")
        cmd = [sys.executable, __file__, "--n", str(args.n), "--threads", str(args.threads), "--repeats",
               str(args.repeats), "--batch-size", str(args.batch_size), "--worker", backend, precision or "-", out]
        cmd += ["--long"] if args.long else []
        t = time.perf_counter()
        subprocess.run(cmd, check=True, env=env)
        stats = json.loads(Path(out + ".json").read_text())
        # the whole process as a user runs it once: start, load, one encode of every text (the warm-up), exit
        stats["whole_s"] = time.perf_counter() - t - sum(stats["times"])  # the warm-up is the one encode
        results[name] = (stats, np.load(out + ".npy"))
    peer_stats, peer_vecs = results["peer: sentence-transformers encode"]
    peer_s = statistics.median(peer_stats["times"])
    n = peer_vecs.shape[0]
    peer_whole = peer_stats["whole_s"]
    what = "Cranfield abstracts with titles" if args.long else "STSb sentences"
    print(f"\n{n} {what}, {args.threads} threads, median of {args.repeats} runs\n")
    print("| configuration | texts/s | tokens/s | x peer | whole process s | x peer | mean cos | p1 cos | "
          "peak RSS MB | load s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, (st, vecs) in results.items():
        med = statistics.median(st["times"][: args.repeats]) if "output" not in name else st["times"][0]
        cos = (vecs * peer_vecs).sum(1) / (np.linalg.norm(vecs, axis=1) * np.linalg.norm(peer_vecs, axis=1))
        print(f"| {name} | {n / med:,.0f} | {st['tokens'] / med:,.0f} | {peer_s / med:.2f} | {st['whole_s']:.1f} | "
              f"{peer_whole / st['whole_s']:.2f} | {cos.mean():.5f} | {np.percentile(cos, 1):.4f} | "
              f"{st['rss_mb']:.0f} | {st['load_s']:.1f} |")
    gflops, ceiling = sgemm_ceiling(args.threads, peer_stats["tokens"] / n)
    print(f"\nsgemm at MiniLM's shapes: {gflops:.0f} GFLOP/s on {args.threads} threads -> at most "
          f"{ceiling:,.0f} tokens/s for MiniLM at {peer_stats['tokens'] / n:.0f} tokens per text")


if __name__ == "__main__":
    main()
