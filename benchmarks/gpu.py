"""GPU encoding: sentence-transformers' ``encode`` and embedsmith's CUDA path on the same GPU, in one run.

Prepared here, run there. The GPU host reaches nothing outside it and takes at most 64 MiB beside the working
tree, so the MiniLM weights travel as float16 safetensors (45 MB, read back as float32 by the fp32 rows)
with the tokenizer and configs; the host's own python3 holds PyTorch, transformers, sentence-transformers and
tokenizers, and embedsmith runs from ``src`` (no install). onnxruntime there has no CUDA provider we can
count on, so the CUDA path is PyTorch's.

    python benchmarks/gpu.py --prepare                  # here: writes benchmarks/.gpu/minilm (git-ignored)
    # there (device tool): carry benchmarks/.gpu, then
    PYTHONPATH=src python3 benchmarks/gpu.py --model benchmarks/.gpu/minilm --n 100000

Rows: the peer (``SentenceTransformer.encode``, batch 32, float32, its defaults), the peer in float16 at
batch 256 (what a tuned user would do), and embedsmith's ``torch`` (float32) and ``torch-fp16`` backends on
the pipelined path (tokenising thread, pinned memory, token-budget batches). Sentences are STSb (tests/data),
repeated to ``--n``; cosines are against the peer's vectors. The whole script stays under 5 minutes on one
H200 (each row is one warm-up of 2,000 sentences, then one timed pass over ``--n``).
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PREPARED = ROOT / "benchmarks" / ".gpu" / "minilm"


def prepare() -> None:
    """Copy the MiniLM folder with float16 weights (for the 64 MiB that may travel)."""
    import torch
    from safetensors.torch import load_file, save_file

    from embedsmith.encoders.registry import _minilm_folder

    src = _minilm_folder()
    if PREPARED.exists():
        shutil.rmtree(PREPARED)
    shutil.copytree(src, PREPARED, ignore=shutil.ignore_patterns("*.safetensors", "*.bin", "onnx", "openvino",
                                                                 "*.onnx", "*.h5", "*.msgpack", "*.ot"))
    weights = load_file(str(src / "model.safetensors"))
    save_file({k: v.to(torch.float16) for k, v in weights.items()}, str(PREPARED / "model.safetensors"))
    size = sum(p.stat().st_size for p in PREPARED.rglob("*") if p.is_file())
    print(f"wrote {PREPARED} ({size / 2**20:.1f} MiB)")


def sentences(n: int) -> list[str]:
    seen: dict[str, None] = {}
    with open(ROOT / "tests" / "data" / "stsb" / "stsb-en-dev.csv", newline="", encoding="utf-8") as f:
        for row in csv.reader(f):
            seen.setdefault(row[0], None)
            seen.setdefault(row[1], None)
    base = list(seen)
    return [base[i % len(base)] for i in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prepare", action="store_true")
    ap.add_argument("--model", type=Path, default=PREPARED)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--json", type=Path, help="also write the rows here")
    ap.add_argument("--device", default="cuda", help="cpu only to try the script itself on a small --n")
    args = ap.parse_args()
    if args.prepare:
        prepare()
        return
    import numpy as np
    import torch

    dev = args.device
    if dev.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("no CUDA device: this benchmark runs on a GPU host only")

    def sync() -> None:
        if dev.startswith("cuda"):
            torch.cuda.synchronize()

    from sentence_transformers import SentenceTransformer

    from embedsmith.encoders.folder import ModelFolder
    from embedsmith.encoders.sentence_transformers import TorchEncoder

    texts = sentences(args.n)
    warm = texts[:2000]
    gpu = torch.cuda.get_device_name(0) if dev.startswith("cuda") else "cpu (a trial of the script)"
    print(f"{gpu}, torch {torch.__version__}, {args.n:,} STSb sentences")
    rows: list[tuple[str, float, np.ndarray]] = []

    def timed(name: str, fn) -> None:  # type: ignore[no-untyped-def]
        fn(warm)
        sync()
        t = time.perf_counter()
        vecs = np.asarray(fn(texts), dtype=np.float32)
        sync()
        dt = time.perf_counter() - t
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        rows.append((name, args.n / dt, vecs))
        print(f"  {name}: {args.n / dt:,.0f} sentences/s", flush=True)

    peer = SentenceTransformer(str(args.model), device=dev, model_kwargs={"torch_dtype": torch.float32})
    timed("peer: sentence-transformers encode (fp32, batch 32)",
          lambda x: peer.encode(x, batch_size=32, convert_to_numpy=True))
    if dev.startswith("cuda"):
        peer.half()
        timed("peer: sentence-transformers encode (fp16, batch 256)",
              lambda x: peer.encode(x, batch_size=256, convert_to_numpy=True))
    peer.cpu()
    folder = ModelFolder.open(args.model)
    for name, half in (("embedsmith torch (fp32, pipelined)", False), ("embedsmith torch-fp16 (pipelined)", True)):
        if half and not dev.startswith("cuda"):
            continue
        enc = TorchEncoder(folder, name="minilm", device=dev, half=half, pipelined=True)
        if not half:
            enc.model.float()
        timed(name, lambda x, enc=enc: enc.encode(x, batch_size=512))
        enc.model.cpu()
        if dev.startswith("cuda"):
            torch.cuda.empty_cache()
    ref_rate, ref = rows[0][1], rows[0][2]
    print("\n| configuration | sentences/s | x peer | mean cos | p1 cos |")
    print("|---|---:|---:|---:|---:|")
    out = []
    for name, rate, vecs in rows:
        cos = (vecs * ref).sum(1)
        print(f"| {name} | {rate:,.0f} | {rate / ref_rate:.2f} | {cos.mean():.5f} | {np.percentile(cos, 1):.4f} |")
        out.append({"name": name, "sentences_per_s": rate, "x_peer": rate / ref_rate, "mean_cos": float(cos.mean()),
                    "p1_cos": float(np.percentile(cos, 1))})
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
