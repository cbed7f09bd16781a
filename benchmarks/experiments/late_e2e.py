"""End-to-end search latency with stored late interaction (issue 20): p50 over 40 Cranfield dev queries.

Indexes the Cranfield dev corpus into a MiniLM (ONNX) collection with stored int2 token vectors (or reuses the
store given as the first argument), then times ``search`` in each mode. Kept as run; figures in
benchmarks/README.md ("Late interaction").

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/experiments/late_e2e.py [STORE]
"""

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from embedsmith import index_paths, load_encoder, open_collection
from embedsmith.rerankers.late_interaction import LateInteraction

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "cranfield-beir-dev"
enc = load_encoder("minilm", backend="onnx")
if len(sys.argv) > 1:
    c = open_collection("c", store=sys.argv[1], encoder=enc, create=False)
else:
    c = open_collection("c", store=tempfile.mkdtemp(), encoder=enc, late_interaction=True)
    index_paths(c, [DATA / "corpus.jsonl"])
qs = [json.loads(line)["text"] for line in open(DATA / "queries.jsonl")][:40]
li = LateInteraction(source="stored")


def t(f):
    f(qs[0])
    ts = []
    for q in qs:
        s = time.perf_counter()
        f(q)
        ts.append(time.perf_counter() - s)
    return np.median(ts) * 1000


print("dense k=10", t(lambda q: c.search(q, k=10)))
print("dense k=100", t(lambda q: c.search(q, k=100)))
print("rerank maxsim k=10 cand=100", t(lambda q: c.search(q, k=10, rerank=li, candidates=100)))
print("hybrid k=10", t(lambda q: c.search(q, k=10, mode="hybrid")))
print("hybrid late k=10", t(lambda q: c.search(q, k=10, mode="hybrid", late_interaction=True)))
print("query tokens", t(lambda q: enc.token_vectors([q], kind="query")))
