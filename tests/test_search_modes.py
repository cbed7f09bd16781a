"""bm25 (SQLite FTS5; SQL over tsvector on PostgreSQL), hybrid fusion, grouping and cross-encoder reranking on
real Cranfield abstracts, on both backends."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from embedsmith import InvalidInputError, open_collection
from embedsmith.ingest import index_paths
from embedsmith.rerankers import Reranker, sigmoid
from embedsmith.search import reciprocal_rank_fusion, weighted_fusion
from embedsmith.store import migrate_collection

CRAN = Path(__file__).parent / "data" / "cranfield"
QUERY = "heat conduction in composite slabs"


@pytest.fixture(scope="module")
def cran_sqlite(tmp_path_factory, minilm_onnx):  # type: ignore[no-untyped-def]
    c = open_collection("cran", store=tmp_path_factory.mktemp("store"), encoder=minilm_onnx)
    report = index_paths(c, [CRAN / "corpus.jsonl"])
    assert report.documents == 300 and report.chunks > 300  # long abstracts became several chunks
    yield c
    c.close()


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def cran(request, cran_sqlite, minilm_onnx):  # type: ignore[no-untyped-def]
    """The indexed abstracts on each backend (PostgreSQL gets a copy: the same vectors, not re-embedded)."""
    if request.param == "sqlite":
        yield cran_sqlite
        return
    from conftest import pg_schema

    with pg_schema(request.getfixturevalue("pg_server")) as pg:
        cran_sqlite.save_index()  # so the migration's own open of the source loads the index file
        migrate_collection("cran", cran_sqlite.folder.parent, pg)
        with open_collection("cran", store=pg, encoder=minilm_onnx) as c:
            yield c


def test_bm25_finds_exact_terms(cran):
    hits = cran.search("transpiration cooling", k=5, mode="bm25")
    assert len(hits) == 5
    assert all("transpir" in (t or "").lower() or "cool" in (t or "").lower() for t in hits.texts)
    assert hits.scores == sorted(hits.scores, reverse=True) and hits.scores[0] > 0
    # punctuation and FTS5 syntax in user text are quoted, not parsed
    assert len(cran.search('slabs" OR NEAR(heat) AND -', k=3, mode="bm25")) == 3


def test_hybrid_rrf_fuses_the_two_lists(cran):
    dense = cran.search(QUERY, k=100, mode="dense")
    sparse = cran.search(QUERY, k=100, mode="bm25")
    fused = reciprocal_rank_fusion([dense.ids, sparse.ids], k=60)
    hybrid = cran.search(QUERY, k=10, mode="hybrid", candidates=100)
    expected = sorted(fused, key=lambda kv: (-kv[1], kv[0]))[:10]
    assert hybrid.ids == [key for key, _ in expected]
    np.testing.assert_allclose(hybrid.scores, [s for _, s in expected])


def test_weighted_fusion_extremes(cran):
    dense = cran.search(QUERY, k=10, mode="dense")
    sparse = cran.search(QUERY, k=10, mode="bm25")
    assert cran.search(QUERY, k=10, mode="hybrid", fusion="weighted", alpha=1.0).ids[:3] == dense.ids[:3]
    assert cran.search(QUERY, k=10, mode="hybrid", fusion="weighted", alpha=0.0).ids[:3] == sparse.ids[:3]
    mixed = weighted_fusion([("a", 1.0), ("b", 0.0)], [("b", 5.0), ("c", 1.0)], alpha=0.5)
    assert dict(mixed) == {"a": 0.5, "b": 0.5, "c": 0.0}


def test_filters_and_grouping_in_every_mode(cran):
    for mode in ("dense", "bm25", "hybrid"):
        hits = cran.search(QUERY, k=10, mode=mode, where={"doc_id": {"$in": ["5", "144", "181", "9"]}})
        assert hits.ids and {m["doc_id"] for m in hits.metadata} <= {"5", "144", "181", "9"}
        grouped = cran.search(QUERY, k=10, mode=mode, group_by="doc_id")
        docs = [m["doc_id"] for m in grouped.metadata]
        assert len(docs) == len(set(docs)) == 10


def test_bad_queries(cran):
    with pytest.raises(InvalidInputError, match="query is empty"):
        cran.search("   ", mode="hybrid")
    with pytest.raises(InvalidInputError, match="has no searchable words"):
        cran.search("?!", mode="bm25")
    with pytest.raises(InvalidInputError, match="bm25 search needs a text query"):
        cran.search(np.zeros(384, np.float32), mode="bm25")
    with pytest.raises(InvalidInputError, match="unknown search mode 'sparse'"):
        cran.search(QUERY, mode="sparse")


def test_deleted_and_replaced_rows_leave_the_bm25_index(store, minilm_onnx):
    with open_collection("b", store=store, encoder=minilm_onnx) as c:
        c.add(["zebra crossing rules", "zebra stripes in the savanna", "lift on a wing"], ids=["a", "b", "c"])
        assert set(c.search("zebra", k=5, mode="bm25").ids) == {"a", "b"}
        c.delete(["a"])
        c.upsert([{"id": "b", "text": "lions in the savanna"}])
        assert c.search("zebra", k=5, mode="bm25").ids == []
        assert c.search("lions", k=5, mode="bm25").ids == ["b"]
        c.compact()
        assert c.search("savanna", k=5, mode="bm25").ids == ["b"]


def test_rerank_orders_candidates_by_the_cross_encoder(cran, tiny_reranker):
    r = Reranker(tiny_reranker)
    seen: list[int] = []
    original = r.logits

    def counting(query, texts):  # type: ignore[no-untyped-def]
        seen.append(len(texts))
        return original(query, texts)

    r.logits = counting  # type: ignore[method-assign]
    first = cran.search(QUERY, k=30, mode="hybrid")
    hits = cran.search(QUERY, k=5, mode="hybrid", rerank=r, candidates=30)
    assert seen == [30] and len(hits) == 5
    # Independently score the same 30 candidates with the raw cross-encoder.
    raw = original(QUERY, first.texts)
    best = np.argsort(-raw, kind="stable")[:5]
    assert hits.ids == [first.ids[i] for i in best]
    np.testing.assert_allclose(hits.rerank_logits, raw[best], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(hits.scores, sigmoid(raw[best]), rtol=1e-4, atol=1e-5)
    assert all(0.0 <= s <= 1.0 for s in hits.scores)
    assert hits.first_stage_scores == [first.scores[i] for i in best]
    assert r.last_latency_s > 0
    d = hits.to_dicts()[0]
    assert set(d) >= {"rerank_logit", "first_stage_score", "score"}


def test_reranker_errors(tmp_path):
    from embedsmith import ModelNotFoundError

    with pytest.raises(ModelNotFoundError, match="no reranker ships offline"):
        Reranker(tmp_path / "nope")


def test_onnx_reranker_matches_torch(tiny_reranker):
    docs = [json.loads(x)["text"] for x in (CRAN / "corpus.jsonl").read_text().splitlines()[:40]]
    torch_r = Reranker(tiny_reranker, backend="torch", device="cpu")
    onnx_r = Reranker(tiny_reranker)  # auto: exact ONNX on CPU
    int8_r = Reranker(tiny_reranker, backend="onnx-int8")
    assert (onnx_r.backend, torch_r.backend) == ("onnx", "torch") and onnx_r.max_length == torch_r.max_length
    ref = torch_r.logits(QUERY, docs)
    np.testing.assert_allclose(onnx_r.logits(QUERY, docs), ref, atol=1e-3)
    approx = int8_r.logits(QUERY, docs)
    assert np.corrcoef(approx, ref)[0, 1] > 0.98
    import onnx  # the exact graph is the fused one: one Attention node per layer

    from embedsmith.encoders.folder import ModelFolder
    from embedsmith.encoders.onnx import onnx_dir

    graph = onnx.load(str(onnx_dir(ModelFolder.open(tiny_reranker)) / "reranker.onnx")).graph
    assert sum(n.op_type == "Attention" for n in graph.node) == 6
    assert not np.allclose(approx, ref, atol=1e-4)  # int8 really is a different (quantised) model


def test_pipeline_evaluation_of_the_deployed_collection(cran, tiny_reranker):
    from embedsmith.evaluation.pipeline import evaluate_pipeline

    rep = evaluate_pipeline(cran, CRAN / "queries.jsonl", CRAN / "qrels" / "dev.tsv")
    assert rep.n_queries > 20 and rep.ann_recall > 0.9
    assert set(rep.modes) == {"dense", "bm25", "hybrid"}
    for mode, s in rep.modes.items():
        assert 0.2 < s["ndcg_at_10"] <= 1 and s["recall_at_100"] >= s["ndcg_at_10"] * 0.5, (mode, s)
    assert rep.problems == {}
    # Judgements naming unknown queries or documents are counted, not scored.
    odd = evaluate_pipeline(cran, {"a": "wing flutter", "b": "heat transfer"},
                            {"a": {"1": 1, "ghost": 2}, "b": {"ghost": 1}, "zz": {"1": 1}}, modes=["bm25"])
    assert odd.n_queries == 1
    assert odd.problems == {"qrels_unknown_doc": 2, "queries_without_relevant_doc": 1, "qrels_unknown_query": 1}
    small = evaluate_pipeline(cran, CRAN / "queries.jsonl", CRAN / "qrels" / "dev.tsv", modes=["dense"],
                              reranker=Reranker(tiny_reranker), candidates=20, depth=20, limit=4)
    assert small.n_queries == 4 and set(small.modes) == {"dense", "rerank"}
    assert 0 <= small.modes["rerank"]["ndcg_at_10"] <= 1
    with pytest.raises(InvalidInputError, match="no judged query"):
        evaluate_pipeline(cran, {"q": "wings"}, {"q": {"no-such-doc": 1}})
