"""BM25 of the embedded store (an in-memory term-document matrix, :mod:`embedsmith.store.lexical`): the ranking
bm25s gives with the same tokens, live statistics under deletes and upserts, filters, and other processes'
writes. Vector-only collections (no model): the texts are real Cranfield abstracts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from embedsmith import open_collection
from embedsmith.store.lexical import K1, B, query_terms, tokenize

CRAN = Path(__file__).parent / "data" / "cranfield"


def cranfield() -> tuple[list[str], list[str], list[str]]:
    docs = [json.loads(line) for line in (CRAN / "corpus.jsonl").read_text().splitlines()]
    queries = [json.loads(line)["text"] for line in (CRAN / "queries.jsonl").read_text().splitlines()]
    return [d["_id"] for d in docs], [f"{d['title']} {d['text']}" for d in docs], queries


def vectors(n: int) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(n, 8)).astype(np.float32)


def reference_ranking(ids: list[str], texts: list[str], query: str, k: int) -> tuple[list[str], np.ndarray]:
    """bm25s (Robertson's BM25, k1=1.2, b=0.75) over the same tokens; its scores are ours / (k1 + 1)."""
    bm25s = pytest.importorskip("bm25s")
    ref = bm25s.BM25(method="robertson", k1=K1, b=B)
    ref.index([tokenize(t) for t in texts], show_progress=False)
    scores = ref.get_scores(query_terms(query)) * (K1 + 1)
    order = sorted((i for i in range(len(ids)) if scores[i] > 0), key=lambda i: (-scores[i], ids[i]))[:k]
    return [ids[i] for i in order], scores[order]


def test_ranking_equals_bm25s_with_the_same_tokens(tmp_path):
    ids, texts, queries = cranfield()
    with open_collection("cran", store=tmp_path, dim=8) as c:
        c.add_vectors(vectors(len(ids)), ids, texts=texts)
        checked = 0
        for query in queries[:25]:
            hits = c.search(query, k=10, mode="bm25")
            want, scores = reference_ranking(ids, texts, query, 10)
            assert hits.ids == want, query
            np.testing.assert_allclose(hits.scores, scores, rtol=1e-5)
            checked += len(want)
        assert checked >= 200


def test_deletes_upserts_and_filters_are_searched_at_once(tmp_path):
    ids, texts, _ = cranfield()
    query = "heat transfer in laminar boundary layers"
    with open_collection("cran", store=tmp_path, dim=8) as c:
        c.add_vectors(vectors(len(ids)), ids, texts=texts, metadata=[{"n": i} for i in range(len(ids))])
        first = c.search(query, k=5, mode="bm25").ids
        c.delete(first[:2])
        keep = [i for i, x in enumerate(ids) if x not in first[:2]]
        after = c.search(query, k=5, mode="bm25")
        # Statistics (N, df, average length) are those of the live rows.
        assert after.ids == reference_ranking([ids[i] for i in keep], [texts[i] for i in keep], query, 5)[0]
        c.upsert_vectors(vectors(1), [first[2]], texts=["a quokka study"], metadata=[{"n": -1}])
        assert first[2] not in c.search(query, k=20, mode="bm25").ids
        assert c.search("quokka", k=3, mode="bm25").ids == [first[2]]
        # A filter keeps the live ranking's order and returns k hits when k match, however few rows match.
        everything = c.search(query, k=1000, mode="bm25")
        for low in (0, 250, 295):
            flt = {"n": {"$gte": low}}
            want = [h.id for h in everything if h.metadata["n"] >= low][:5]
            assert c.search(query, k=5, mode="bm25", where=flt).ids == want
            assert len(want) == 5 or low == 295  # 5 of the last 50 rows hold a query word; maybe not of 5


WRITER = """
import sys
import numpy as np
from embedsmith import open_collection
with open_collection("cran", store=sys.argv[1]) as c:
    c.add_vectors(np.ones((1, 8), np.float32), ["late"], texts=["the quokka wing in a slipstream"])
    c.delete([sys.argv[2]])
"""


def test_another_processs_writes_are_searched_at_once(tmp_path):
    ids, texts, _ = cranfield()
    with open_collection("cran", store=tmp_path, dim=8) as c:
        c.add_vectors(vectors(len(ids)), ids, texts=texts)
        top = c.search("wing slipstream", k=3, mode="bm25").ids
        assert c.search("quokka", k=3, mode="bm25").ids == []
        subprocess.run([sys.executable, "-c", WRITER, str(tmp_path), top[0]], check=True, capture_output=True)
        assert c.search("quokka", k=3, mode="bm25").ids == ["late"]
        assert top[0] not in c.search("wing slipstream", k=10, mode="bm25").ids


def test_the_matrix_is_saved_reloaded_and_rebuilt_when_damaged(tmp_path, monkeypatch):
    import embedsmith.store.lexical as lexical
    from embedsmith import IndexRebuildWarning

    ids, texts, queries = cranfield()
    with open_collection("cran", store=tmp_path, dim=8) as c:
        c.add_vectors(vectors(len(ids)), ids, texts=texts)
        c.search(queries[0], k=10, mode="bm25")
        c.delete(ids[:3])
        after_delete = c.search(queries[0], k=10, mode="bm25")
    path = tmp_path / "cran" / lexical.FILE
    assert path.is_file()

    tokenized: list[str] = []
    real = lexical.tokenize
    monkeypatch.setattr(lexical, "tokenize", lambda text: tokenized.append(text) or real(text))
    with open_collection("cran", store=tmp_path) as c:  # loaded, not rebuilt: only the queries are tokenized
        assert c.search(queries[0], k=10, mode="bm25") == after_delete
        assert tokenized == [queries[0]]
        assert c.verify().ok
    monkeypatch.setattr(lexical, "tokenize", real)

    path.write_bytes(path.read_bytes()[:500])  # damaged: rebuilt from the rows, with a warning
    with open_collection("cran", store=tmp_path) as c:
        report = c.verify()
        assert not report.ok and report.checks["bm25_file"] == "damaged"
        with pytest.warns(IndexRebuildWarning, match="BM25 matrix"):
            assert c.search(queries[0], k=10, mode="bm25") == after_delete
        c.repair()
        assert c.verify().ok
        live = [i for i, x in enumerate(ids) if x not in ids[:3]]
        for q in queries[1:5]:
            assert c.search(q, k=10, mode="bm25").ids == reference_ranking(
                [ids[i] for i in live], [texts[i] for i in live], q, 10)[0]


COMPACTOR = """
import sys
from embedsmith import open_collection
with open_collection("cran", store=sys.argv[1]) as c:
    c.delete(sys.argv[2:])
    c.compact()
"""


@pytest.mark.filterwarnings("error::embedsmith.IndexRebuildWarning")
def test_a_compaction_elsewhere_rebuilds_the_matrix(tmp_path):
    """Rows the other process compacted away were never seen deleted here: the matrix starts again, and
    closing this handle saves no index older than the compaction."""
    ids, texts, queries = cranfield()
    with open_collection("cran", store=tmp_path, dim=8) as c:
        c.add_vectors(vectors(len(ids)), ids, texts=texts)
        top = c.search(queries[0], k=5, mode="bm25").ids
        subprocess.run([sys.executable, "-c", COMPACTOR, str(tmp_path), *top[:2]], check=True, capture_output=True)
        got = c.search(queries[0], k=5, mode="bm25")
    with open_collection("cran", store=tmp_path) as fresh:
        assert got == fresh.search(queries[0], k=5, mode="bm25")
        assert not set(top[:2]) & set(got.ids)
