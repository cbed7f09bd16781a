"""RAG-ready results: diversity (MMR), dedup, boosts and decay, on hand-made vectors and on real chunks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from embedsmith import InvalidInputError, index_paths, open_collection

CRAN = Path(__file__).parent / "data" / "cranfield" / "corpus.jsonl"


def unit(*xs: float) -> np.ndarray:
    v = np.array(xs, np.float32)
    return v / np.linalg.norm(v)


@pytest.fixture
def near_copies(store):  # type: ignore[no-untyped-def]
    """a1 and a2 nearly the same, both closest to the query; b almost as close but unlike them; c far."""
    with open_collection("m", store=store, dim=4) as c:
        c.add_vectors(np.stack([unit(1, 0.2, 0, 0), unit(1, 0.19, 0, 0.01), unit(0.15, 1, 0.1, 0), unit(0, 0, 0, 1)]),
                      ["a1", "a2", "b", "c"], texts=["a one", "a two", "b", "c"],
                      metadata=[{"year": 2001, "w": 0}, {"year": 2023, "w": 1}, {"year": 2024, "w": 0},
                                {"year": "unknown"}])
        yield c


Q = unit(1, 1, 0, 0)  # cosines: a1 0.832, a2 0.827, b 0.800, c 0


def test_diversity_orders_by_maximal_marginal_relevance(near_copies):
    q = Q
    assert near_copies.search(q, k=3).ids == ["a1", "a2", "b"]
    assert near_copies.search(q, k=2, diversity=0).ids == ["a1", "a2"]
    # lambda 0.5: after a1, b (0.5 * 0.96 - 0.5 * 0.33 = 0.32) beats a2 (0.5 * 0.99 - 0.5 * 1.00 < 0), a copy of a1
    assert near_copies.search(q, k=2, diversity=0.5).ids == ["a1", "b"]
    # then c (relevance 0, but unlike both) beats a2 (still a copy): MMR's trade, as specified
    assert near_copies.search(q, k=3, diversity=0.5).ids == ["a1", "b", "c"]
    assert near_copies.search(q, k=2, diversity=0.02).ids == ["a1", "a2"]  # near 0, relevance still wins
    many = near_copies.search_many([q, q], k=2, diversity=0.5)
    assert [h.ids for h in many] == [["a1", "b"]] * 2


def test_dedup_drops_near_copies_of_a_better_hit(near_copies):
    q = Q
    assert near_copies.search(q, k=3, dedup=True).ids == ["a1", "b", "c"]
    assert near_copies.search(q, k=3, dedup=0.99999).ids == ["a1", "a2", "b"]  # a stricter threshold keeps a2


def test_boost_and_decay_reorder_and_name_bad_input(near_copies):
    q = Q
    boosted = near_copies.search(q, k=3, boost={"w": 1.0}, where={"w": {"$exists": True}})
    assert boosted.ids[0] == "a2" and boosted.scores[0] == pytest.approx(1 + 0.827 / 0.832, abs=1e-3)
    recent = near_copies.search(q, k=3, decay={"field": "year", "origin": 2024, "scale": 2, "decay": 0.5},
                                where={"w": {"$exists": True}})
    assert recent.ids[0] in ("a2", "b") and recent.ids[-1] == "a1"
    on_dates = near_copies.search(q, k=3, where={"w": {"$exists": True}},
                                  decay={"field": "year", "origin": 2024, "scale": 100, "function": "linear"})
    assert len(on_dates) == 3
    with pytest.raises(InvalidInputError, match="'year' needs a number"):
        near_copies.search(q, k=4, decay={"field": "year", "origin": 2024, "scale": 2})  # c's year is a string
    for bad in ({"diversity": 1.5}, {"diversity": -0.1}, {"dedup": 0}, {"dedup": 2}, {"boost": {"w": "x"}},
                {"boost": {}}, {"decay": {"field": "year", "origin": 1}}, {"decay": {"field": "year", "origin": 1,
                                                                                    "scale": 0}},
                {"decay": {"field": "year", "origin": "last tuesday", "scale": 1}},
                {"decay": {"field": "year", "origin": 1, "scale": 1, "function": "cubic"}}):
        with pytest.raises(InvalidInputError):
            near_copies.search(q, k=2, **bad)


def test_dedup_merges_overlapping_chunks_of_one_document(tmp_path, minilm_onnx):
    docs = tmp_path / "docs"
    docs.mkdir()
    rows = [json.loads(x) for x in CRAN.read_text().splitlines()[:30]]
    text = " ".join(r["text"] for r in rows[:6])  # one long document, chunked with a large overlap
    (docs / "long.txt").write_text(text)
    (docs / "other.jsonl").write_text("".join(json.dumps({"id": r["_id"], "text": r["text"]}) + "\n"
                                              for r in rows[6:]))
    with open_collection("kb", store=tmp_path / "s", encoder=minilm_onnx) as c:
        index_paths(c, [docs], max_tokens=64, overlap=32)
        query = rows[2]["text"][:120]
        plain = c.search(query, k=10)
        spans = [(h.metadata["start"], h.metadata["end"]) for h in plain if h.metadata["source"].endswith("long.txt")]
        overlapping = any(a[0] < b[1] and b[0] < a[1] for i, a in enumerate(spans) for b in spans[i + 1 :])
        assert overlapping  # the case dedup is for: neighbouring windows of one text both rank
        merged = c.search(query, k=10, dedup=True)
        kept = [h for h in merged if h.metadata["source"].endswith("long.txt")]
        for i, a in enumerate(kept):
            for b in kept[i + 1 :]:
                assert a.metadata["end"] <= b.metadata["start"] or b.metadata["end"] <= a.metadata["start"]
            assert a.text == text[a.metadata["start"] : a.metadata["end"]]  # offsets slice the document exactly
        assert any(len(h.metadata.get("merged", [])) > 1 for h in kept)
        assert merged.ids[0] == plain.ids[0]


@pytest.fixture(scope="module")
def kb(tmp_path_factory, minilm_onnx):  # type: ignore[no-untyped-def]
    """40 Cranfield documents with titles, chunked small with overlap (so neighbours and merges happen)."""
    root = tmp_path_factory.mktemp("rag")
    rows = [json.loads(x) for x in CRAN.read_text().splitlines()[:40]]
    (root / "corpus.jsonl").write_text("".join(json.dumps({"id": r["_id"], "title": r["title"], "text": r["text"]})
                                               + "\n" for r in rows))
    store = root / "store"
    with open_collection("kb", store=store, encoder=minilm_onnx) as c:
        index_paths(c, [root / "corpus.jsonl"], max_tokens=48, overlap=12)
    full = {r["_id"]: f"{r['title']}\n\n{r['text']}" for r in rows}
    return store, full


QUESTION = "what is the effect of heat transfer on boundary layer flow"


def test_context_fits_the_budget_and_cites_exact_offsets(kb, minilm_onnx):
    store, full = kb
    count = lambda text: len(minilm_onnx.token_spans(text))  # noqa: E731 - the encoder's own tokens
    with open_collection("kb", store=store, encoder=minilm_onnx) as c:
        for budget in (60, 300, 1200):
            ctx = c.context(QUESTION, budget_tokens=budget)
            assert ctx.passages and ctx.tokens == count(ctx.to_markdown()) <= budget  # citations count too
            seen: dict[str, int] = {}
            for p in ctx.passages:
                assert p.text == full[p.doc_id][p.start : p.end]  # offsets slice the document exactly
                if p.doc_id in seen:  # grouped by document, in document order, never overlapping
                    assert list(seen)[-1] == p.doc_id and p.start >= seen[p.doc_id]
                seen[p.doc_id] = p.end
        big = c.context(QUESTION, budget_tokens=1200)
        assert any(len(p.text) > 0 and p.end - p.start > max(len(h.text or "") for h in c.search(QUESTION, k=20))
                   for p in big.passages)  # widened or merged beyond a single chunk
        as_json = c.context(QUESTION, budget_tokens=300, format="json")
        assert as_json.tokens == sum(count(p.text) for p in as_json.passages) <= 300
        words = c.context(QUESTION, budget_tokens=100, tokenizer=lambda t: len(t.split()), format="json")
        assert sum(len(p.text.split()) for p in words.passages) == words.tokens <= 100
        for bad in ({"budget_tokens": 0}, {"budget_tokens": -5}, {"budget_tokens": 1.5}, {"format": "xml"},
                    {"widen_above": 2}, {"tokenizer": 42}):
            with pytest.raises(InvalidInputError):
                c.context(QUESTION, **bad)
        with pytest.raises(InvalidInputError, match="count"):
            c.context(QUESTION, tokenizer=lambda t: -1)


def test_context_is_the_same_from_the_library_the_cli_and_http(kb, minilm_onnx):
    import os
    import subprocess
    import sys

    from fastapi.testclient import TestClient

    from embedsmith.server import ServerSettings, create_app

    store, _ = kb
    with open_collection("kb", store=store, encoder=minilm_onnx) as c:
        want = c.context(QUESTION, budget_tokens=400, format="json").to_dict()
        md = c.context(QUESTION, budget_tokens=400).to_markdown()
    proc = subprocess.run([sys.executable, "-m", "embedsmith.cli", "context", QUESTION, "-c", "kb", "--store",
                           str(store), "--budget", "400", "--format", "json"], capture_output=True, text=True,
                          env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == want
    bad = subprocess.run([sys.executable, "-m", "embedsmith.cli", "context", QUESTION, "-c", "kb", "--store",
                          str(store), "--budget", "0"], capture_output=True, text=True, env=dict(os.environ))
    assert bad.returncode == 1 and "budget_tokens" in bad.stderr and "Traceback" not in bad.stderr
    app = create_app(ServerSettings(store=str(store)), encoders={"minilm": minilm_onnx})
    with TestClient(app, base_url="http://127.0.0.1") as http:
        res = http.post("/v1/collections/kb/context", json={"query": QUESTION, "budget_tokens": 400,
                                                              "format": "json"})
        assert res.status_code == 200, res.text
        body = res.json()
        assert {k: body[k] for k in ("tokens", "budget", "passages")} == want
        res = http.post("/v1/collections/kb/context", json={"query": QUESTION, "budget_tokens": 400})
        assert res.json()["markdown"] == md
        assert http.post("/v1/collections/kb/context", json={"query": QUESTION, "budget_tokens": 0}).status_code == 422
        shaped = http.post("/v1/collections/kb/search", json={"query": QUESTION, "k": 5, "diversity": 0.5,
                                                             "dedup": True})
        assert shaped.status_code == 200 and len(shaped.json()["data"]) == 5
        assert http.post("/v1/collections/kb/search", json={"query": QUESTION, "decay": {"field": "title",
                                                            "origin": 1, "scale": 1}}).status_code == 400


@pytest.fixture(scope="module")
def cran_kb(tmp_path_factory, minilm_onnx):  # type: ignore[no-untyped-def]
    """The Cranfield slice (300 abstracts, whole), and its 113 judged queries."""
    from collections import Counter

    from embedsmith.io import read_beir_queries, read_qrels

    root = tmp_path_factory.mktemp("cal")
    store = root / "store"
    with open_collection("cran", store=store, encoder=minilm_onnx) as c:
        index_paths(c, [CRAN])
    problems: Counter[str] = Counter()
    queries = read_beir_queries(CRAN.parent / "queries.jsonl", problems)
    qrels: dict[str, dict[str, int]] = {}
    for q, d, g in read_qrels(CRAN.parent / "qrels" / "dev.tsv", problems):
        qrels.setdefault(q, {})[d] = g
    return store, queries, qrels


def test_calibrated_relevance_is_monotone_stored_and_filters(cran_kb, minilm_onnx):
    from embedsmith.calibration import NOTE, stored

    store, queries, qrels = cran_kb
    with open_collection("cran", store=store, encoder=minilm_onnx) as c:
        q = queries["3"]
        with pytest.raises(InvalidInputError, match="calibrat"):
            c.search(q, k=5, min_relevance=0.5)  # nothing fitted yet: said, not ignored
        assert c.search(q, k=5).relevance is None
        report = c.calibrate(queries=queries, qrels=qrels, mode="dense", holdout=0.3)
        assert report["source"] == "qrels" and report["holdout_queries"] >= 10 and report["relevant"] > 20
        assert 0 <= report["ece_fit"] <= report["ece_holdout"] + 0.2 and report["ece_holdout"] < 0.2
        cal = stored(c, "dense", False)
        assert cal is not None and list(cal.y) == sorted(cal.y) and list(cal.x) == sorted(cal.x)
        hits = c.search(q, k=20)
        assert hits.relevance is not None and all(0 <= p <= 1 for p in hits.relevance)
        assert all(a >= b for a, b in zip(hits.relevance, hits.relevance[1:], strict=False))  # monotone in score
        assert hits.to_dicts()[0]["relevance"] == hits.relevance[0]
        kept = c.search(q, k=20, min_relevance=0.3)
        assert kept.ids == [i for i, p in zip(hits.ids, hits.relevance, strict=True) if p >= 0.3]
        assert c.search("zzzz qqqq xylophone marmalade", k=20, min_relevance=0.9).ids == []
        assert c.search(q, k=5, mode="bm25").relevance is None  # each mode is fitted on its own
        with pytest.raises(InvalidInputError, match="min_relevance"):
            c.search(q, k=5, min_relevance=1.5)
        with pytest.raises(InvalidInputError, match="boost"):
            c.search(q, k=5, min_relevance=0.5, boost={"x": 1})
        with pytest.raises(InvalidInputError, match="both"):
            c.calibrate(queries=queries)
        # a fit belongs to the encoder it was made with: under another fingerprint it is ignored
        note = c.notes()[NOTE]
        c.set_notes(**{NOTE: {**note, "fingerprint": "another-model:onnx"}})
        assert stored(c, "dense", False) is None and c.search(q, k=5).relevance is None
        pseudo = c.calibrate(mode="bm25", pseudo=60, holdout=0.25)  # no labels: inverse-cloze pseudo-queries
        assert pseudo["source"].startswith("pseudo") and pseudo["relevant"] >= 30
        assert c.search(q, k=5, mode="bm25").relevance is not None


def test_cli_calibrate_and_min_relevance(cran_kb, tmp_path):
    import os
    import subprocess
    import sys

    store, _, _ = cran_kb
    copy = tmp_path / "store"
    import shutil

    shutil.copytree(store, copy)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "embedsmith.cli", *args, "--store", str(copy)],
                              capture_output=True, text=True, env=dict(os.environ))

    out = cli("calibrate", "-c", "cran", "--queries", str(CRAN.parent / "queries.jsonl"), "--qrels",
              str(CRAN.parent / "qrels" / "dev.tsv"), "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["mode"] == "dense"
    found = json.loads(cli("search", "heat conduction in composite slabs", "-c", "cran", "-k", "10",
                           "--min-relevance", "0.2", "--json").stdout)["hits"]
    assert found and all(h["relevance"] >= 0.2 for h in found)
    bad = cli("calibrate", "-c", "cran", "--queries", str(CRAN.parent / "queries.jsonl"))
    assert bad.returncode == 1 and "together" in bad.stderr and "Traceback" not in bad.stderr


def test_ask_answers_from_the_packed_context_through_a_chat_endpoint(kb, minilm_onnx):
    import os
    import subprocess
    import sys
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import httpx

    from embedsmith.ask import LLMError, ask

    store, _ = kb
    seen: list[dict] = []

    class Fake(BaseHTTPRequestHandler):  # a local OpenAI-compatible chat server
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append({"path": self.path, **body})
            status = 500 if body["model"] == "broken" else 200
            content = json.dumps({"choices": [{"message": {"role": "assistant", "content":
                                                           "Heat transfer thickens the layer [1]."}}]}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Fake)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/v1"
    try:
        with open_collection("kb", store=store, encoder=minilm_onnx) as c:
            got = ask(c, QUESTION, llm=f"openai-chat:tiny@{url}", budget_tokens=300)
            assert got.text == "Heat transfer thickens the layer [1]." and got.model == "tiny"
            sent = seen[-1]
            assert sent["path"] == "/v1/chat/completions" and sent["temperature"] == 0
            user = sent["messages"][-1]["content"]
            assert QUESTION in user and got.context.to_markdown() in user  # the packed, cited context
            assert len(got.sources()) == len(got.context.passages) and got.sources()[0].startswith("[1] ")
            with pytest.raises(LLMError, match="500"):
                ask(c, QUESTION, llm=f"openai-chat:broken@{url}")
            with pytest.raises(InvalidInputError, match="chat endpoint"):
                ask(c, QUESTION, llm=None)
            with pytest.raises(LLMError):
                ask(c, QUESTION, llm="openai-chat:x@http://127.0.0.1:9", transport=httpx.MockTransport(
                    lambda r: httpx.Response(200, json={"unexpected": True})))
        env = dict(os.environ)
        out = subprocess.run([sys.executable, "-m", "embedsmith.cli", "ask", QUESTION, "-c", "kb", "--store",
                              str(store), "--llm", f"openai-chat:tiny@{url}", "--budget", "300"],
                             capture_output=True, text=True, env=env)
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith("Heat transfer thickens the layer [1].") and "Sources:\n[1] " in out.stdout
        none = subprocess.run([sys.executable, "-m", "embedsmith.cli", "ask", QUESTION, "-c", "kb", "--store",
                               str(store)], capture_output=True, text=True, env=env)
        assert none.returncode == 1 and "--llm openai-chat:MODEL@URL" in none.stderr
        assert "Traceback" not in none.stderr and len(none.stderr.strip().splitlines()) == 1
    finally:
        server.shutdown()


def test_eval_pipeline_reports_redundancy_and_context_recall(cran_kb, minilm_onnx):
    import os
    import subprocess
    import sys

    from embedsmith.evaluation.pipeline import evaluate_pipeline

    store, queries, qrels = cran_kb
    with open_collection("cran", store=store, encoder=minilm_onnx) as c:
        rep = evaluate_pipeline(c, queries, qrels, modes=["dense"], limit=6, rag=True)
    red, recall = rep.rag["dense"]["redundancy"], rep.rag["dense"]["context_recall"]
    assert set(red) == {"none", "dedup", "diversity 0.3"} and set(recall) == {"1000", "2000", "4000"}
    assert red["dedup"]["near_duplicate_pairs"] <= red["none"]["near_duplicate_pairs"]
    assert red["diversity 0.3"]["mean_pairwise_cosine"] <= red["none"]["mean_pairwise_cosine"] + 1e-9
    assert red["none"]["ndcg_at_10"] == pytest.approx(rep.modes["dense"]["ndcg_at_10"], abs=0.05)
    assert all(0 <= r["context"] <= 1 and 0 <= r["naive"] <= 1 for r in recall.values())
    assert recall["4000"]["context"] >= recall["1000"]["context"]  # more budget never reaches fewer documents
    out = subprocess.run([sys.executable, "-m", "embedsmith.cli", "eval", "pipeline", "-c", "cran", "--store",
                          str(store), "--queries", str(CRAN.parent / "queries.jsonl"), "--qrels",
                          str(CRAN.parent / "qrels" / "dev.tsv"), "--modes", "dense", "--limit", "3", "--rag",
                          "--json"], capture_output=True, text=True, env=dict(os.environ))
    assert out.returncode == 0, out.stderr
    assert set(json.loads(out.stdout)["rag"]["dense"]) == {"redundancy", "context_recall"}


def test_shaping_composes_with_filters_grouping_and_rerank(kb, minilm_onnx, tiny_reranker):
    from embedsmith import Reranker

    store, _ = kb
    r = Reranker(tiny_reranker)
    with open_collection("kb", store=store, encoder=minilm_onnx) as c:
        reranked = c.search(QUESTION, k=8, rerank=r, candidates=30)
        shaped = c.search(QUESTION, k=5, rerank=r, candidates=30, dedup=True, diversity=0.3)
        assert len(shaped) == 5 and set(shaped.ids) <= set(c.search(QUESTION, k=30).ids)
        assert shaped.ids[0] == reranked.ids[0]  # MMR keeps the reranker's best first
        assert shaped.rerank_logits is not None and shaped.first_stage_scores is not None
        grouped = c.search(QUESTION, k=5, group_by="doc_id", diversity=0.5, where={"chunk": {"$lte": 3}})
        docs = [h.metadata["doc_id"] for h in grouped]
        assert len(docs) == len(set(docs)) and all(h.metadata["chunk"] <= 3 for h in grouped)
