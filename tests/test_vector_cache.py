"""The content-addressed vector cache: hits and misses, what keys it, its bound, damage, two writing processes,
and its use by ingestion, re-embedding and the CLI. Real MiniLM, real Cranfield text."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from embedsmith import VectorCache, index_paths, load_encoder, open_collection
from embedsmith.encoders import VectorCacheWarning, using_cache
from embedsmith.encoders.cache import cache_namespace
from embedsmith.store import reembed_collection

CRAN = Path(__file__).parent / "data" / "cranfield" / "corpus.jsonl"


def abstracts(n: int, start: int = 0) -> list[str]:
    rows = [json.loads(x) for x in CRAN.read_text().splitlines()[start : start + n]]
    return [r["text"] for r in rows]


def test_hits_return_the_vectors_the_model_gives(tmp_path, minilm_onnx):
    texts = abstracts(20)
    plain = minilm_onnx.encode(texts)
    cache = VectorCache(tmp_path / "v.sqlite")
    with using_cache(minilm_onnx, cache):
        first = minilm_onnx.encode(texts[:12])
        assert (cache.hits, cache.misses) == (0, 12)
        again = minilm_onnx.encode(texts)  # 12 stored, 8 new, one call to the model for the 8
        assert (cache.hits, cache.misses) == (12, 20)
        # dims and precision are applied after the cache: the same entries serve them
        cut = minilm_onnx.encode(texts, dims=64, precision="int8")
        assert cache.misses == 20 and cache.stats()["entries"] == 20
    np.testing.assert_array_equal(first, plain[:12])
    np.testing.assert_array_equal(again, plain)
    np.testing.assert_array_equal(cut, minilm_onnx.encode(texts, dims=64, precision="int8"))
    assert minilm_onnx.vector_cache is None  # off again outside the block (the library's default)
    dup = [texts[0], texts[0], texts[1]]
    with using_cache(minilm_onnx, VectorCache(tmp_path / "d.sqlite")):
        np.testing.assert_array_equal(minilm_onnx.encode(dup), plain[[0, 0, 1]])


def test_keyed_by_model_backend_prompt_and_length(tmp_path, minilm_onnx):
    texts = abstracts(6)
    cache = VectorCache(tmp_path / "v.sqlite")
    int8 = load_encoder("minilm", backend="onnx-int8")
    prompted = load_encoder("minilm", backend="onnx", prompts={"query": "query: "})
    with using_cache(minilm_onnx, cache), using_cache(int8, cache), using_cache(prompted, cache):
        exact = minilm_onnx.encode(texts)
        quantised = int8.encode(texts)  # another fingerprint: its own vectors, never the exact ones
        assert cache.misses == 12
        assert not np.array_equal(exact, quantised)
        np.testing.assert_array_equal(quantised, int8.encode(texts))
        prompted.encode(texts, kind="query")  # the query prompt changes the vector: a miss
        assert cache.misses == 18
        prompted.encode(texts)  # no kind, no prompt: the exact model's entries
        assert cache.misses == 18
    assert cache_namespace(minilm_onnx, "") != cache_namespace(int8, "")
    assert cache_namespace(minilm_onnx, "") != cache_namespace(minilm_onnx, "query: ")
    assert cache_namespace(minilm_onnx, "") != cache_namespace(minilm_onnx, "", truncation="left")


def test_bounded_least_recently_used_first(tmp_path):
    cache = VectorCache(tmp_path / "v.sqlite", max_bytes=400_000)
    ns = b"n" * 32
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(1000, 384)).astype(np.float32)
    texts = [f"text {i}" for i in range(1000)]
    cache.put(cache.keys(ns, texts[:100]), vecs[:100])
    for i in range(100, 1000, 100):
        cache.get(cache.keys(ns, texts[:10]), 384)  # the first ten are used again and again: they outlive the rest
        cache.put(cache.keys(ns, texts[i : i + 100]), vecs[i : i + 100])
    stats = cache.stats()
    assert stats["entries"] < 1000
    assert len(cache.get(cache.keys(ns, texts[:10]), 384)) == 10
    assert len(cache.get(cache.keys(ns, texts[10:100]), 384)) < 90
    live = cache.get(cache.keys(ns, texts[900:]), 384)
    assert len(live) == 100 and np.array_equal(live[cache.keys(ns, [texts[950]])[0]], vecs[950])
    assert stats["entries"] * 384 * 4 <= 400_000
    cache.close()
    assert os.path.getsize(tmp_path / "v.sqlite") <= 1_000_000  # freed pages go back (incremental vacuum)


def test_a_damaged_cache_warns_and_encoding_goes_on(tmp_path, minilm_onnx):
    bad = tmp_path / "v.sqlite"
    bad.write_bytes(b"this is not a database" * 100)
    texts = abstracts(3)
    with using_cache(minilm_onnx, VectorCache(bad)), pytest.warns(VectorCacheWarning, match="unusable"):
        v = minilm_onnx.encode(texts)
    np.testing.assert_array_equal(v, minilm_onnx.encode(texts))


WRITER = """
import sys
from embedsmith import VectorCache, load_encoder
from embedsmith.encoders import using_cache
import json
texts = json.loads(sys.argv[2])
enc = load_encoder("minilm", backend="onnx", threads=1)
cache = VectorCache(sys.argv[1])
with using_cache(enc, cache):
    for i in range(0, len(texts), 5):
        enc.encode(texts[i:i + 5])
print(cache.misses)
"""


def test_two_processes_write_the_cache_at_once(tmp_path, minilm_onnx):
    texts = abstracts(40)
    path = tmp_path / "v.sqlite"
    # overlapping halves, written in small transactions by two processes at the same time
    parts = [texts[:25], texts[15:]]
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), json.dumps(p)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=dict(os.environ)) for p in parts]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    cache = VectorCache(path)
    assert cache.stats()["entries"] == 40
    with using_cache(minilm_onnx, cache):
        got = minilm_onnx.encode(texts)
    assert cache.misses == 0
    np.testing.assert_allclose(got, minilm_onnx.encode(texts), atol=1e-5)  # 1 thread vs 2: same to rounding


def test_ingestion_and_reembedding_reuse_unchanged_chunks(tmp_path, minilm_onnx):
    docs = tmp_path / "docs"
    docs.mkdir()
    paragraphs = abstracts(8)
    (docs / "a.md").write_text("\n\n".join(paragraphs[:4]))
    (docs / "b.md").write_text("\n\n".join(paragraphs[4:]))
    cache = VectorCache(tmp_path / "v.sqlite")
    with open_collection("kb", store=tmp_path / "store", encoder=minilm_onnx) as c:
        first = index_paths(c, [docs], max_tokens=64, overlap=0, vector_cache=cache)
        assert first.chunks_cached == 0 and first.chunks > 8
        # one file edited at its end: its earlier chunks are unchanged, their vectors come from the cache
        (docs / "a.md").write_text("\n\n".join(paragraphs[:4]) + "\n\nA closing remark on boundary layers.")
        second = index_paths(c, [docs], max_tokens=64, overlap=0, vector_cache=cache)
        assert second.files_indexed == 1 and 0 < second.chunks_cached < second.chunks
        stored = {r["id"]: r for r in c.get(where={"doc_hash": {"$exists": True}}, include_vectors=True)}
    with open_collection("fresh", store=tmp_path / "store2", encoder=minilm_onnx) as d:
        index_paths(d, [docs], max_tokens=64, overlap=0)  # no cache: the model's own vectors
        for r in d.get(where={"doc_hash": {"$exists": True}}, include_vectors=True):
            np.testing.assert_allclose(stored[r["id"]]["vector"], r["vector"], atol=1e-6)
    report = reembed_collection("kb", "kb2", minilm_onnx, store=tmp_path / "store", vector_cache=cache)
    assert report["count"] == len(stored) and cache.misses == first.chunks + second.chunks - second.chunks_cached


def test_cli_index_uses_the_cache_unless_told_not_to(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("\n\n".join(abstracts(3)))
    env = dict(os.environ, EMBEDSMITH_CACHE=str(tmp_path / "cache"))

    def index(*extra: str) -> str:
        proc = subprocess.run([sys.executable, "-m", "embedsmith.cli", "index", str(docs), "-c", "kb", "--store",
                               str(tmp_path / "s"), *extra], capture_output=True, text=True, env=env)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        index("--no-vector-cache")
        assert not (tmp_path / "cache" / "vectors.sqlite").exists()
        (docs / "a.txt").write_text("\n\n".join(abstracts(4)))
        index()
        assert (tmp_path / "cache" / "vectors.sqlite").exists()
        (docs / "a.txt").write_text("\n\n".join(abstracts(5)))
        assert "from the vector cache" in index()
