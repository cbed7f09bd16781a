"""Cold start: wall time of a fresh process that loads a model and embeds one sentence.

``embedsmith embed "hello world"`` per backend, against a bare sentence-transformers script (the peer).
The ONNX export is already cached and the file cache is warm; median of --repeats runs.

    python benchmarks/coldstart.py --repeats 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent / "embedsmith"
PEER = (
    "from sentence_transformers import SentenceTransformer\n"
    "from embedsmith.encoders.registry import _minilm_folder\n"
    "SentenceTransformer(str(_minilm_folder()), device='cpu').encode(['hello world'])\n"
)


def timed(cmd: list[str], repeats: int) -> float:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    subprocess.run(cmd, check=True, capture_output=True, env=env)  # warm the file cache
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, env=env)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    rows = [("peer: sentence-transformers load + encode", timed([sys.executable, "-c", PEER], args.repeats))]
    for backend in ("onnx", "onnx-int8", "torch"):
        rows.append((f"embedsmith embed --backend {backend}",
                     timed([str(BIN), "embed", "hello world", "--backend", backend, "--json"], args.repeats)))
    rows.append(("embedsmith --help", timed([str(BIN), "--help"], args.repeats)))
    print(f"\nmedian of {args.repeats} runs\n")
    print("| command | seconds |")
    print("|---|---:|")
    for name, s in rows:
        print(f"| {name} | {s:.2f} |")


if __name__ == "__main__":
    main()
