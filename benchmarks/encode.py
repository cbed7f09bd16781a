"""Encoding throughput: embedsmith backends against sentence-transformers' own ``encode`` (the peer).

Each configuration runs in a fresh subprocess (so peak RSS is its own), on the same sentences, with the
same thread count; the table reports the median of ``--repeats`` timed runs after one warm-up.

    python benchmarks/encode.py --n 2000 --threads 2 --repeats 3
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

CONFIGS = {
    "peer: sentence-transformers encode": ("peer", None),
    "embedsmith torch": ("torch", None),
    "embedsmith onnx fp32": ("onnx", None),
    "embedsmith onnx int8": ("onnx-int8", None),
    "embedsmith onnx int8 + int8 output": ("onnx-int8", "int8"),
    "embedsmith onnx fp32 + binary output": ("onnx", "binary"),
}


def load_sentences(n: int) -> list[str]:
    path = DATA if DATA.is_file() else FALLBACK
    seen: dict[str, None] = {}
    with open(path, newline="") as f:
        for row in csv.reader(f):
            seen.setdefault(row[0], None)
            seen.setdefault(row[1], None)
    return list(seen)[:n]


def worker(backend: str, precision: str | None, n: int, threads: int, repeats: int, batch: int, out: str) -> None:
    import numpy as np

    texts = load_sentences(n)
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
    ap.add_argument("--worker", nargs=3, metavar=("BACKEND", "PRECISION", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        b, p, o = args.worker
        worker(b, None if p == "-" else p, args.n, args.threads, args.repeats, args.batch_size, o)
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
        subprocess.run(cmd, check=True, env=env)
        results[name] = (json.loads(Path(out + ".json").read_text()), np.load(out + ".npy"))
    peer_stats, peer_vecs = results["peer: sentence-transformers encode"]
    peer_s = statistics.median(peer_stats["times"])
    n = peer_vecs.shape[0]
    print(f"\n{n} STSb sentences, {args.threads} threads, median of {args.repeats} runs\n")
    print("| configuration | sentences/s | tokens/s | x peer | mean cos | p1 cos | peak RSS MB | load s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, (st, vecs) in results.items():
        med = statistics.median(st["times"][: args.repeats]) if "output" not in name else st["times"][0]
        cos = (vecs * peer_vecs).sum(1) / (np.linalg.norm(vecs, axis=1) * np.linalg.norm(peer_vecs, axis=1))
        print(f"| {name} | {n / med:,.0f} | {st['tokens'] / med:,.0f} | {peer_s / med:.2f} | "
              f"{cos.mean():.5f} | {np.percentile(cos, 1):.4f} | {st['rss_mb']:.0f} | {st['load_s']:.1f} |")


if __name__ == "__main__":
    main()
