"""The HTTP service on a real uvicorn server over loopback, with the real MiniLM (ONNX) and a tiny cross-encoder.

The official ``openai`` client talks to it unchanged; answers are compared with the library's own results.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
import re
import warnings

import httpx
import numpy as np
import pytest

from conftest import SEED, serving
from embedsmith import IndexRebuildWarning, InvalidInputError, open_collection
from embedsmith.encoders.base import BaseEncoder
from embedsmith.rerankers import Reranker
from embedsmith.server import ServerSettings, create_app
from embedsmith.server.batching import EmbeddingBatcher

openai = pytest.importorskip("openai")
schemathesis = pytest.importorskip("schemathesis")
hypothesis = pytest.importorskip("hypothesis")
KEY = "sk-test-7f3a9c1e5b"
DOCS = [
    {"id": "d1", "text": "Heat conduction in composite slabs with layered materials.", "metadata": {"topic": "heat",
                                                                                                      "year": 1961}},
    {"id": "d2", "text": "Transpiration cooling of a porous flat plate in supersonic flow.",
     "metadata": {"topic": "heat", "year": 1958}},
    {"id": "d3", "text": "Boundary layer transition on swept wings at high Reynolds numbers.",
     "metadata": {"topic": "flow", "year": 1960}},
    {"id": "d4", "text": "Aeroelastic models of heated high speed aircraft.", "metadata": {"topic": "structures",
                                                                                          "year": 1959}},
    {"id": "d5", "text": "The stock market fell sharply today.", "metadata": {"topic": "finance", "year": 2024}},
]


@pytest.fixture(scope="module")
def reranker(tiny_reranker):  # type: ignore[no-untyped-def]
    return Reranker(tiny_reranker)


LIMITS = {"max_inputs": 64, "max_input_chars": 2000, "max_body_bytes": 200_000}


@pytest.fixture(scope="module")
def settings(tmp_path_factory) -> ServerSettings:  # type: ignore[no-untyped-def]
    return ServerSettings(store=str(tmp_path_factory.mktemp("store")), **LIMITS)


# Every test that touches collections runs on both backends: `backend_settings` and `backend_url`.
@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def backend_settings(request, tmp_path_factory):  # type: ignore[no-untyped-def]
    if request.param == "sqlite":
        yield ServerSettings(store=str(tmp_path_factory.mktemp("store")), **LIMITS)
        return
    from conftest import pg_schema

    with pg_schema(request.getfixturevalue("pg_server")) as pg:
        yield ServerSettings(store=pg, **LIMITS)


@pytest.fixture(scope="module")
def backend_url(backend_settings, minilm_onnx, reranker):  # type: ignore[no-untyped-def]
    with serving(create_app(backend_settings, encoders={"minilm": minilm_onnx}, reranker=reranker)) as base:
        yield base


@pytest.fixture(scope="module")
def app(settings, minilm_onnx, reranker):  # type: ignore[no-untyped-def]
    return create_app(settings, encoders={"minilm": minilm_onnx}, reranker=reranker)


@pytest.fixture(scope="module")
def url(app):  # type: ignore[no-untyped-def]
    with serving(app) as base:
        yield base


@pytest.fixture(scope="module")
def client(url):  # type: ignore[no-untyped-def]
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


def assert_openai_error(res: httpx.Response, status: int, *, param: str | None = None) -> dict:
    assert res.status_code == status, res.text
    body = res.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"] and "Traceback" not in res.text
    if param is not None:
        assert body["error"]["param"] == param
    return body["error"]


# -- embeddings -----------------------------------------------------------------------------------------
def test_openai_client_gets_the_library_vectors(client, minilm_onnx):
    expected = minilm_onnx.encode(SEED)
    res = client.embeddings.create(input=SEED, model="minilm")  # the client asks for base64 by default
    got = np.array([d.embedding for d in res.data])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert [d.index for d in res.data] == [0, 1, 2] and res.model == "minilm"
    assert res.usage.prompt_tokens == res.usage.total_tokens == sum(minilm_onnx.count_tokens(SEED))

    floats = client.embeddings.create(input=SEED, model="minilm", encoding_format="float")
    np.testing.assert_allclose(np.array([d.embedding for d in floats.data]), expected, atol=1e-5)

    one = client.embeddings.create(input="A cat sits on the mat.", model="minilm")
    np.testing.assert_allclose(one.data[0].embedding, expected[0], atol=1e-5)

    short = client.embeddings.create(input=SEED, model="minilm", dimensions=64)
    cut = np.array([d.embedding for d in short.data])
    assert cut.shape == (3, 64)
    np.testing.assert_allclose(np.linalg.norm(cut, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(cut, minilm_onnx.encode(SEED, dims=64), atol=1e-5)


def test_base64_decodes_to_the_float_answer(url):
    body = {"input": SEED, "model": "minilm"}
    floats = httpx.post(url + "/v1/embeddings", json=body).json()
    packed = httpx.post(url + "/v1/embeddings", json={**body, "encoding_format": "base64"}).json()
    for f, p in zip(floats["data"], packed["data"], strict=True):
        assert isinstance(p["embedding"], str)
        decoded = np.frombuffer(base64.b64decode(p["embedding"]), dtype="<f4")
        np.testing.assert_array_equal(decoded, np.asarray(f["embedding"], dtype=np.float32))
    assert floats["usage"] == packed["usage"] and floats["object"] == "list"


def test_query_prompt_extension_and_model_default(url, minilm_onnx):
    res = httpx.post(url + "/v1/embeddings", json={"input": ["find cats"], "input_type": "query"}).json()
    np.testing.assert_allclose(res["data"][0]["embedding"], minilm_onnx.encode(["find cats"], kind="query")[0],
                               atol=1e-5)
    assert res["model"] == "minilm"


def test_models_in_openai_shape(client, minilm_onnx, reranker):
    models = {m.id: m for m in client.models.list().data}
    assert models["minilm"].object == "model" and models["minilm"].owned_by == "embedsmith"
    assert models["minilm"].model_extra["dim"] == 384
    assert models["minilm"].model_extra["fingerprint"] == minilm_onnx.fingerprint
    assert models[reranker.path.name].model_extra["type"] == "rerank"
    assert client.models.retrieve("minilm").id == "minilm"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")


def test_embedding_errors_in_openai_shape(client, url):
    with pytest.raises(openai.NotFoundError, match="not served here"):
        client.embeddings.create(input="x", model="text-embedding-3-small")
    with pytest.raises(openai.BadRequestError, match="dimensions=999 is larger than minilm's dimension 384"):
        client.embeddings.create(input="x", model="minilm", dimensions=999)
    post = lambda body: httpx.post(url + "/v1/embeddings", json=body)  # noqa: E731
    assert_openai_error(post({"input": ["fine", "  "]}), 400, param="input")
    assert "input[1] is empty" in post({"input": ["fine", "  "]}).json()["error"]["message"]
    assert_openai_error(post({"input": []}), 400, param="input")
    err = assert_openai_error(post({"input": [[1, 2, 3]]}), 422, param="input")
    assert "token arrays are not accepted" in err["message"]
    assert_openai_error(post({"input": "x", "dimensions": 0}), 422, param="dimensions")
    assert_openai_error(post({"input": "x", "encoding_format": "int8"}), 422, param="encoding_format")
    assert_openai_error(post({"model": "minilm"}), 422, param="input")
    assert_openai_error(httpx.post(url + "/v1/embeddings", content=b"{not json", headers={
        "content-type": "application/json"}), 422)
    assert_openai_error(httpx.get(url + "/v1/nothing-here"), 404)
    assert_openai_error(httpx.get(url + "/v1/embeddings"), 405)


def test_limits_413_and_422(url):
    post = lambda body: httpx.post(url + "/v1/embeddings", json=body)  # noqa: E731
    err = assert_openai_error(post({"input": ["x"] * 65}), 413, param="input")
    assert "65 items; the limit is 64" in err["message"]
    err = assert_openai_error(post({"input": ["ok", "y" * 2001]}), 422, param="input")
    assert "input[1] has 2001 characters; the limit is 2000" in err["message"]
    big = json.dumps({"input": ["word " * 300] * 150}).encode()
    assert len(big) > 200_000
    err = assert_openai_error(httpx.post(url + "/v1/embeddings", content=big,
                                         headers={"content-type": "application/json"}), 413)
    assert "limit is 200000" in err["message"]

    def chunks():  # no Content-Length: the limit is enforced while reading
        for _ in range(30):
            yield b" " * 10_000

    res = httpx.post(url + "/v1/embeddings", content=chunks(), headers={"content-type": "application/json"})
    err = assert_openai_error(res, 413)
    assert "200000 bytes" in err["message"]


# -- dynamic batching ------------------------------------------------------------------------------------------
def test_batcher_coalesces_concurrent_requests_exactly(minilm_onnx):
    texts = [f"sentence number {i} about {w}" for i, w in enumerate(["cats", "markets", "wings", "heat"] * 4)]
    sizes = [1, 3, 2, 4, 1, 5]
    parts, start = [], 0
    for n in sizes:
        parts.append(texts[start : start + n])
        start += n

    async def run() -> tuple[list[tuple[np.ndarray, list[int]]], EmbeddingBatcher]:
        batcher = EmbeddingBatcher(minilm_onnx, max_batch=64, max_wait_s=0.05)
        dims = [None, 32, None, 128, None, None]
        kinds = [None, None, "query", None, None, "document"]
        from embedsmith.types import Kind

        try:
            out = await asyncio.gather(*(batcher.embed(p, kind=Kind(k) if k else None, dims=d)
                                         for p, d, k in zip(parts, dims, kinds, strict=True)))
        finally:
            await batcher.stop()
        return out, batcher

    results, batcher = asyncio.run(run())
    assert batcher.stats.batches == 1 and batcher.stats.texts == sum(sizes)
    np.testing.assert_allclose(results[0][0], minilm_onnx.encode(parts[0]), atol=1e-5)
    np.testing.assert_allclose(results[1][0], minilm_onnx.encode(parts[1], dims=32), atol=1e-5)
    np.testing.assert_allclose(results[2][0], minilm_onnx.encode(parts[2], kind="query"), atol=1e-5)
    np.testing.assert_allclose(results[3][0], minilm_onnx.encode(parts[3], dims=128), atol=1e-5)
    np.testing.assert_allclose(results[5][0], minilm_onnx.encode(parts[5], kind="document"), atol=1e-5)
    assert results[4][1] == minilm_onnx.count_tokens(parts[4])


def test_batcher_rejects_when_the_queue_is_full(minilm_onnx):
    from embedsmith.server.batching import QueueFullError

    async def run() -> None:
        batcher = EmbeddingBatcher(minilm_onnx, max_batch=4, max_wait_s=0.0, max_queue=4)
        try:
            first = asyncio.ensure_future(batcher.embed(["a", "b", "c"]))
            await asyncio.sleep(0)
            with pytest.raises(QueueFullError, match="texts are waiting"):
                await batcher.embed(["d", "e"])
            await first
        finally:
            await batcher.stop()

    asyncio.run(run())


# -- rerank ------------------------------------------------------------------------------------------------------
def test_rerank_sorted_and_equal_to_the_library(url, reranker):
    query = "heat conduction in composite slabs"
    docs = [d["text"] for d in DOCS]
    res = httpx.post(url + "/v1/rerank", json={"query": query, "documents": docs, "top_n": 3,
                                               "return_documents": True})
    assert res.status_code == 200, res.text
    results = res.json()["results"]
    expected = reranker.rerank(query, docs, top_n=3)
    assert [r["index"] for r in results] == [i for i, _, _ in expected]
    scores = [r["relevance_score"] for r in results]
    assert scores == sorted(scores, reverse=True) and all(0 <= x <= 1 for x in scores)
    np.testing.assert_allclose(scores, [p for _, p, _ in expected], atol=1e-5)
    assert all(r["document"]["text"] == docs[r["index"]] for r in results)
    # Cohere v1 / Jina style documents as objects; all of them when top_n is absent; no texts unless asked
    objs = httpx.post(url + "/v1/rerank", json={"query": query, "documents": [{"text": t} for t in docs]}).json()
    assert len(objs["results"]) == 5 and "document" not in objs["results"][0]
    assert_openai_error(httpx.post(url + "/v1/rerank", json={"query": query, "documents": []}), 400, param="documents")
    assert_openai_error(httpx.post(url + "/v1/rerank", json={"query": " ", "documents": docs}), 400, param="query")
    assert_openai_error(httpx.post(url + "/v1/rerank", json={"query": query, "documents": docs, "model": "bge"}), 404)


class _NoTokenVectors(BaseEncoder):
    """A served encoder without token states (as static and remote models are)."""

    name, dim, max_tokens, fingerprint, backend = "plain", 4, 64, "plain:test", "test"

    def __init__(self) -> None:
        self.prompts = {}

    def _token_lengths(self, texts, kind):  # type: ignore[no-untyped-def]
        return [len(t.split()) for t in texts]

    def _embed(self, texts, kind, batch_size, show_progress):  # type: ignore[no-untyped-def]
        return np.ones((len(texts), self.dim), np.float32)


def test_rerank_with_maxsim_over_a_served_encoder(settings, minilm_onnx):
    from fastapi.testclient import TestClient

    from embedsmith.rerankers import LateInteraction

    query = "heat conduction in composite slabs"
    docs = [d["text"] for d in DOCS]
    # no cross-encoder is loaded: maxsim needs none
    app = create_app(settings, encoders={"minilm": minilm_onnx, "plain": _NoTokenVectors()})
    with TestClient(app, base_url="http://127.0.0.1") as api:  # the Host check answers local hosts only
        res = api.post("/v1/rerank", json={"query": query, "documents": docs, "model": "maxsim:minilm", "top_n": 3,
                                           "return_documents": True})
        assert res.status_code == 200, res.text
        body = res.json()
        expected = LateInteraction(minilm_onnx).rerank(query, docs, top_n=3)
        assert body["model"] == "maxsim:minilm" and [r["index"] for r in body["results"]] == [i for i, _, _ in expected]
        np.testing.assert_allclose([r["relevance_score"] for r in body["results"]], [s for _, s, _ in expected],
                                   atol=1e-5)
        assert all(r["relevance_logit"] == r["relevance_score"] for r in body["results"])
        assert all(r["document"]["text"] == docs[r["index"]] for r in body["results"])
        # "maxsim" is the default (first) encoder; the model's own name works as a served name does
        plain = api.post("/v1/rerank", json={"query": query, "documents": docs, "model": "maxsim"}).json()
        assert plain["model"] == "maxsim:minilm" and len(plain["results"]) == 5
        assert [r["index"] for r in plain["results"]][:3] == [i for i, _, _ in expected]
        own = api.post("/v1/rerank", json={"query": query, "documents": docs, "model": f"maxsim:{minilm_onnx.name}"})
        assert own.status_code == 200 and own.json()["model"] == "maxsim:minilm"
        for unknown in ("maxsim:bge", "maxsim:", "maxsim:/tmp/some/folder"):
            err = assert_openai_error(api.post("/v1/rerank", json={"query": query, "documents": docs,
                                                                   "model": unknown}), 404, param="model")
            assert err["code"] == "model_not_found"
        err = assert_openai_error(api.post("/v1/rerank", json={"query": query, "documents": docs,
                                                               "model": "maxsim:plain"}), 400, param="model")
        assert err["code"] == "no_token_vectors" and "token vectors" in err["message"]
        assert_openai_error(api.post("/v1/rerank", json={"query": query, "documents": [], "model": "maxsim"}), 400,
                            param="documents")
        # the cross-encoder path still says none is loaded
        assert_openai_error(api.post("/v1/rerank", json={"query": query, "documents": docs}), 404, param="model")


# -- collections -------------------------------------------------------------------------------------------------
def test_collections_crud_and_search(backend_url, backend_settings, minilm_onnx, reranker):
    api = httpx.Client(base_url=backend_url)
    settings = backend_settings
    created = api.post("/v1/collections", json={"name": "papers"})
    assert created.status_code == 201, created.text
    assert created.json()["model"] == "minilm" and created.json()["count"] == 0
    assert_openai_error(api.post("/v1/collections", json={"name": "papers"}), 409, param="name")
    assert_openai_error(api.post("/v1/collections", json={"name": "bad/name"}), 400)
    assert_openai_error(api.post("/v1/collections", json={"name": "x", "model": "gpt"}), 404, param="model")
    assert "papers" in [c["name"] for c in api.get("/v1/collections").json()["data"]]

    added = api.post("/v1/collections/papers/documents", json={"documents": DOCS})
    assert added.status_code == 200, added.text
    assert added.json() == {"object": "list", "ids": [d["id"] for d in DOCS], "count": 5}
    err = assert_openai_error(api.post("/v1/collections/papers/documents", json={"documents": DOCS[:1]}), 400)
    assert "already in collection 'papers'" in err["message"]
    replaced = api.put("/v1/collections/papers/documents", json={"documents": [
        {"id": "d5", "text": "Stock markets fell sharply.", "metadata": {"topic": "finance", "year": 2025}}]})
    assert replaced.json()["count"] == 5
    got = api.get("/v1/collections/papers/documents", params={"ids": ["d5", "nope", "d1"]}).json()["data"]
    assert [g["id"] for g in got] == ["d5", "d1"] and got[0]["metadata"]["year"] == 2025
    assert api.get("/v1/collections/papers").json()["count"] == 5

    query = "heat transfer in slabs"
    with warnings.catch_warnings():  # the server holds the index in memory; this second reader rebuilds its own
        warnings.simplefilter("ignore", IndexRebuildWarning)
        lib = open_collection("papers", store=settings.store, encoder=minilm_onnx)
    with lib:
        for mode in ("dense", "bm25", "hybrid"):
            res = api.post("/v1/collections/papers/search", json={"query": query, "k": 3, "mode": mode})
            assert res.status_code == 200, res.text
            assert [h["id"] for h in res.json()["data"]] == lib.search(query, k=3, mode=mode).ids
        flt = {"topic": "heat", "year": {"$gte": 1960}}
        res = api.post("/v1/collections/papers/search", json={"query": query, "where": flt}).json()
        assert [h["id"] for h in res["data"]] == lib.search(query, where=flt).ids == ["d1"]
        ranked = api.post("/v1/collections/papers/search", json={"query": query, "k": 3, "rerank": True}).json()
        expected = lib.search(query, k=3, rerank=reranker)
        assert [h["id"] for h in ranked["data"]] == expected.ids
        assert all(h["rerank_logit"] is not None for h in ranked["data"])
        scores = [h["score"] for h in ranked["data"]]
        assert scores == sorted(scores, reverse=True)

    bad = api.post("/v1/collections/papers/search", json={"query": query, "where": {"year": {"$near": 3}}})
    assert "unknown filter operator '$near'" in assert_openai_error(bad, 400)["message"]
    assert_openai_error(api.post("/v1/collections/papers/search", json={"query": query, "mode": "sparse"}), 422,
                        param="mode")
    assert_openai_error(api.post("/v1/collections/papers/search", json={"query": "  "}), 400)
    assert_openai_error(api.post("/v1/collections/nope/search", json={"query": query}), 404)
    assert_openai_error(api.post("/v1/collections/papers/search", json={"query": "?!", "mode": "bm25"}), 400)

    deleted = api.post("/v1/collections/papers/documents/delete", json={"where": {"topic": "heat"}}).json()
    assert deleted == {"object": "deleted", "deleted": 2, "count": 3}
    assert api.post("/v1/collections/papers/documents/delete", json={"ids": ["d3"]}).json()["count"] == 2
    assert_openai_error(api.post("/v1/collections/papers/documents/delete", json={}), 400)
    assert api.delete("/v1/collections/papers").json() == {"id": "papers", "object": "collection", "deleted": True}
    assert_openai_error(api.get("/v1/collections/papers"), 404)
    assert_openai_error(api.delete("/v1/collections/papers"), 404)


def test_search_without_a_reranker_is_a_clear_error(minilm_onnx, tmp_path):
    app = create_app(ServerSettings(store=str(tmp_path)), encoders={"minilm": minilm_onnx})
    with serving(app) as base:
        httpx.post(base + "/v1/collections", json={"name": "c"})
        res = httpx.post(base + "/v1/collections/c/search", json={"query": "x", "rerank": True})
        assert "--reranker" in assert_openai_error(res, 400, param="rerank")["message"]
        assert "--reranker" in assert_openai_error(httpx.post(base + "/v1/rerank", json={
            "query": "x", "documents": ["y"]}), 404)["message"]


# -- API key -------------------------------------------------------------------------------------------------
def test_api_key_guards_every_endpoint_but_health(minilm_onnx, reranker, tmp_path, monkeypatch):
    import hmac

    compared: list[bytes] = []
    original = hmac.compare_digest

    def spy(a, b):  # type: ignore[no-untyped-def]
        compared.append(a)
        return original(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    app = create_app(ServerSettings(store=str(tmp_path), api_key=KEY), encoders={"minilm": minilm_onnx},
                     reranker=reranker)
    assert KEY not in repr(app.state.service.settings)
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record))

    handler = Keep(level=logging.DEBUG)
    loggers = [logging.getLogger(n) for n in ("", "uvicorn", "uvicorn.access", "uvicorn.error", "embedsmith")]
    for lg in loggers:
        lg.addHandler(handler)
    try:
        with serving(app, log_level="debug", access_log=True, log_config=None) as base:
            paths = json.loads(httpx.get(base + "/openapi.json", headers={"Authorization": f"Bearer {KEY}"}).text)
            operations = [(m.upper(), p.replace("{name}", "c").replace("{model_id}", "minilm"))
                          for p, ops in paths["paths"].items() for m in ops]
            operations += [("GET", "/openapi.json"), ("GET", "/docs"), ("GET", "/v1/unknown")]
            assert len(operations) >= 16
            for method, path in operations:
                for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY},
                                {"Authorization": f"Bearer {KEY}x"}):
                    res = httpx.request(method, base + path, headers=headers, json={})
                    if path == "/health":
                        assert res.status_code == 200
                        continue
                    err = assert_openai_error(res, 401)
                    assert err["code"] == "invalid_api_key" and res.headers["www-authenticate"] == "Bearer"
            good = {"Authorization": f"Bearer {KEY}"}
            assert httpx.get(base + "/v1/models", headers=good).status_code == 200
            assert httpx.get(base + "/", headers={}).status_code == 200  # the page's HTML holds no data
            wrong = openai.OpenAI(base_url=base + "/v1", api_key="sk-wrong", max_retries=0)
            with pytest.raises(openai.AuthenticationError):
                wrong.embeddings.create(input="x", model="minilm")
            right = openai.OpenAI(base_url=base + "/v1", api_key=KEY, max_retries=0)
            assert len(right.embeddings.create(input="x", model="minilm").data[0].embedding) == 384
    finally:
        for lg in loggers:
            lg.removeHandler(handler)
    assert b"Bearer wrong" in compared  # the key is checked in constant time
    assert any("401" in r for r in records)  # the access log was captured...
    assert not any(KEY in r for r in records)  # ...and never shows the key


# -- metrics ---------------------------------------------------------------------------------------------------
def test_metrics_in_prometheus_text(url):
    for _ in range(3):
        httpx.post(url + "/v1/embeddings", json={"input": SEED})
    httpx.post(url + "/v1/embeddings", json={"input": "x", "model": "nope"})
    res = httpx.get(url + "/metrics")
    assert res.status_code == 200 and res.headers["content-type"].startswith("text/plain")
    text = res.text

    def value(pattern: str) -> float:
        m = re.search("^" + re.escape(pattern) + r" ([0-9.e+]+)$", text, re.M)
        assert m, f"{pattern} not in metrics"
        return float(m.group(1))

    assert value('embedsmith_http_requests_total{method="POST",route="/v1/embeddings",status="200"}') >= 3
    assert value('embedsmith_http_requests_total{method="POST",route="/v1/embeddings",status="404"}') >= 1
    count = value('embedsmith_http_request_duration_seconds_count{method="POST",route="/v1/embeddings"}')
    assert value('embedsmith_http_request_duration_seconds_bucket{method="POST",route="/v1/embeddings",le="+Inf"}') \
        == count >= 4
    assert value('embedsmith_batch_size_count{model="minilm"}') >= 3
    assert value('embedsmith_embedded_texts_total{model="minilm"}') >= 9
    assert value('embedsmith_queue_depth{model="minilm"}') == 0
    for family in ("embedsmith_http_requests_total", "embedsmith_batch_size", "embedsmith_queue_depth"):
        assert text.count(f"# TYPE {family} ") == 1


# -- load ----------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_32_concurrent_clients_get_no_errors(url, minilm_onnx):
    rng = random.Random(7)
    words = "heat flow wing slab cooling plate boundary layer market cat mat shock wave pressure".split()
    requests = [[" ".join(rng.choices(words, k=rng.randint(3, 12))) for _ in range(rng.randint(1, 8))]
                for _ in range(32 * 4)]

    async def run() -> list[tuple[int, list[list[float]]]]:
        limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as http:
            async def client(mine: list[list[str]]) -> list[tuple[int, list[list[float]]]]:
                out = []
                for texts in mine:
                    r = await http.post("/v1/embeddings", json={"input": texts})
                    out.append((r.status_code, [d["embedding"] for d in r.json()["data"]]
                                if r.status_code == 200 else []))
                return out

            results = await asyncio.gather(*(client(requests[i::32]) for i in range(32)))
        return [r for per_client in results for r in per_client]

    before = httpx.get(url + "/metrics").text
    results = asyncio.run(run())
    assert [status for status, _ in results] == [200] * len(requests)
    ordered = [requests[i::32] for i in range(32)]
    flat_texts = [t for per_client in ordered for texts in per_client for t in texts]
    flat_vectors = np.array([v for _, vecs in results for v in vecs])
    np.testing.assert_allclose(flat_vectors, minilm_onnx.encode(flat_texts), atol=1e-5)
    after = httpx.get(url + "/metrics").text
    batches = [float(re.search(r'^embedsmith_batch_size_count\{model="minilm"\} (\S+)$', t, re.M).group(1))
               for t in (before, after)]
    assert batches[1] - batches[0] < len(requests)  # requests were coalesced


# -- the OpenAPI spec tells the truth -----------------------------------------------------------------------------
@pytest.mark.slow
def test_openapi_spec_holds_under_schemathesis(backend_url):
    url = backend_url
    """Valid and invalid requests generated from /openapi.json: no 5xx, and every answer is as documented."""
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    api_schema = schemathesis.openapi.from_url(url + "/openapi.json")
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 14
    statuses: dict[int, int] = {}
    poisoned: dict[str, int] = {}
    # Hypothesis writes only encodable text, so lone surrogates (valid JSON escapes) and filters past the
    # limits are put in by hand: into every string of a generated body, or as its `where`.
    deep: dict = {"n": 1}
    for _ in range(40):
        deep = {"$and": [deep]}
    wide = {"$or": [{"n": i} for i in range(999)]}
    httpx.delete(url + "/v1/collections/fuzz")
    httpx.post(url + "/v1/collections", json={"name": "fuzz"}).raise_for_status()
    httpx.post(url + "/v1/collections/fuzz/documents", json={"documents": [
        {"id": "a", "text": "heat flow in slabs", "metadata": {"n": 1}}]}).raise_for_status()

    def poison(value, how: str):  # type: ignore[no-untyped-def]
        if isinstance(value, str):
            return value + "\ud800" if how == "surrogate" else value
        if isinstance(value, list):
            return [poison(v, how) for v in value]
        if isinstance(value, dict):
            return {poison(k, how): poison(v, how) for k, v in value.items()}
        return value

    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @hypothesis.given(case=operation.as_strategy(generation_mode=mode),
                              how=hypothesis.strategies.sampled_from(["none", "surrogate", "deep", "wide"]))
            @hypothesis.settings(max_examples=12, deadline=None, derandomize=True, database=None,
                                 suppress_health_check=list(hypothesis.HealthCheck))
            def run(case, how):  # type: ignore[no-untyped-def]
                if isinstance(case.body, dict) and how != "none":
                    # Sent by hand: schemathesis encodes bodies as UTF-8, which a lone surrogate is not.
                    body = poison(case.body, how) if how == "surrogate" else {
                        **case.body, "where": deep if how == "deep" else wide}
                    poisoned[how] = poisoned.get(how, 0) + 1
                    if case.path_parameters and "name" in case.path_parameters:
                        case.path_parameters["name"] = "fuzz"  # a collection that exists, so filters are read
                    res = httpx.request(case.method, url + case.formatted_path, params=case.query,
                                        content=json.dumps(body).encode("ascii"),
                                        headers={"Content-Type": "application/json"}, timeout=60)
                    assert res.status_code < 500, (case.method, case.formatted_path, body, res.text)
                    if res.status_code >= 400:
                        assert_openai_error(res, res.status_code)
                    if res.status_code == 400:
                        poisoned["refused"] = poisoned.get("refused", 0) + 1
                else:
                    res = case.call_and_validate(base_url=url, checks=checks, timeout=60)
                statuses[res.status_code] = statuses.get(res.status_code, 0) + 1

            try:
                run()
            except hypothesis.errors.Unsatisfiable:  # no parameters to make invalid (GET /health)
                assert mode is GenerationMode.NEGATIVE
    assert {200, 400, 404, 422} <= set(statuses), statuses
    assert min(poisoned.values(), default=0) >= 5 and len(poisoned) == 4, poisoned


# -- the command ---------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_embedsmith_serve_command(tmp_path):
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "EMBEDSMITH_API_KEY": KEY}
    proc = subprocess.Popen(
        [sys.executable, "-m", "embedsmith.cli", "serve", "--port", str(port), "--store", str(tmp_path),
         "--backend", "onnx", "--max-inputs", "4"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(base + "/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "server did not start"
            time.sleep(0.2)
        assert httpx.get(base + "/v1/models").status_code == 401
        good = {"Authorization": f"Bearer {KEY}"}
        res = httpx.post(base + "/v1/embeddings", json={"input": ["a"] * 5}, headers=good)
        assert_openai_error(res, 413)
        assert httpx.post(base + "/v1/embeddings", json={"input": ["a"] * 4}, headers=good).status_code == 200
    finally:
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=30)[0]
    assert f"on http://127.0.0.1:{port}" in out and KEY not in out

    bad = subprocess.run([sys.executable, "-m", "embedsmith.cli", "serve", "--workers", "0"], capture_output=True,
                         text=True, env=env)
    assert bad.returncode == 1 and bad.stderr.strip() == "embedsmith: error: --workers must be at least 1, got 0"
    # An empty key is refused: it would otherwise silently mean "no auth".
    empty = subprocess.run([sys.executable, "-m", "embedsmith.cli", "serve", "--port", str(port)], capture_output=True,
                           text=True, env={**os.environ, "EMBEDSMITH_API_KEY": ""})
    assert empty.returncode == 1 and empty.stderr.startswith("embedsmith: error: the API key is empty")
    assert "Traceback" not in empty.stderr and len(empty.stderr.strip().splitlines()) == 1


def test_without_a_key_only_requests_to_this_host_are_answered(url, minilm_onnx, tmp_path):
    """DNS rebinding: a page on attacker.example that resolves to 127.0.0.1 sends Host: attacker.example. Without
    an API key, such requests are refused before they reach any route (the collection is still there)."""
    from embedsmith.server.app import host_name

    httpx.post(url + "/v1/collections", json={"name": "rebind"}).raise_for_status()
    for host in ("attacker.example", "attacker.example:80", "127.0.0.1.attacker.example", ""):
        res = httpx.delete(url + "/v1/collections/rebind", headers={"Host": host})
        assert assert_openai_error(res, 403)["code"] == "forbidden_host", host
        assert httpx.get(url + "/v1/models", headers={"Host": host}).status_code == 403
    port = url.rsplit(":", 1)[1]
    for host in (f"localhost:{port}", f"LOCALHOST:{port}", f"127.0.0.1:{port}", "[::1]"):
        assert httpx.get(url + "/v1/models", headers={"Host": host}).status_code == 200, host
    assert httpx.get(url + "/v1/collections/rebind").status_code == 200
    assert httpx.delete(url + "/v1/collections/rebind").status_code == 200
    assert [host_name(h) for h in ("Box.LAN:8000", "[::1]:8000", "::1", "0.0.0.0")] == \
        ["box.lan", "[::1]", "[::1]", "0.0.0.0"]
    # --allowed-host adds a name; an empty key does not mean "no key".
    app = create_app(ServerSettings(store=str(tmp_path), allowed_hosts=["box.lan"]), encoders={"minilm": minilm_onnx})
    with serving(app) as base:
        assert httpx.get(base + "/v1/models", headers={"Host": "box.lan:9000"}).status_code == 200
        assert httpx.get(base + "/v1/models", headers={"Host": "other.lan"}).status_code == 403
    with pytest.raises(InvalidInputError, match="api_key is empty"):
        ServerSettings(api_key="")


def test_one_failing_request_does_not_fail_its_batch(minilm_onnx):
    class Picky:
        """The real encoder, except that it refuses any batch holding the text 'poison'."""

        name, dim, max_tokens, fingerprint = "picky", minilm_onnx.dim, minilm_onnx.max_tokens, "x"

        def count_tokens(self, texts, *, kind=None):  # type: ignore[no-untyped-def]
            return minilm_onnx.count_tokens(texts, kind=kind)

        def encode(self, texts, **kw):  # type: ignore[no-untyped-def]
            if "poison" in texts:
                raise RuntimeError("refused")
            return minilm_onnx.encode(texts, **kw)

    async def run() -> list[object]:
        batcher = EmbeddingBatcher(Picky(), max_wait_s=0.05)  # type: ignore[arg-type]
        try:
            return await asyncio.gather(batcher.embed(["fine"]), batcher.embed(["poison"]), batcher.embed(["ok"]),
                                        return_exceptions=True)
        finally:
            await batcher.stop()

    fine, poisoned, ok = asyncio.run(run())
    assert isinstance(poisoned, RuntimeError)
    np.testing.assert_allclose(fine[0], minilm_onnx.encode(["fine"]), atol=1e-5)  # type: ignore[index]
    np.testing.assert_allclose(ok[0], minilm_onnx.encode(["ok"]), atol=1e-5)  # type: ignore[index]


def test_bad_input_is_a_4xx_never_a_5xx(backend_url, backend_settings):
    """Lone surrogates (valid JSON escapes, not storable text), filters too large for SQLite, group_by on a
    list-valued field and a damaged collection beside good ones: each used to answer 500."""
    api = httpx.Client(base_url=backend_url)
    surrogate = b'"\\ud800 x"'

    def raw(method: str, path: str, body: bytes) -> httpx.Response:
        return api.request(method, path, content=body, headers={"Content-Type": "application/json"})

    assert_openai_error(raw("POST", "/v1/embeddings", b'{"input": ' + surrogate + b"}"), 400, param="input")
    api.post("/v1/collections", json={"name": "strict"}).raise_for_status()
    docs = "/v1/collections/strict/documents"
    for doc in (b'{"id": "a", "text": ' + surrogate + b"}", b'{"id": ' + surrogate + b', "text": "ok"}',
                b'{"id": "a", "text": "ok", "metadata": {"k": ' + surrogate + b"}}",
                b'{"id": "a", "text": "ok", "metadata": {' + surrogate + b": 1}}"):
        res = raw("POST", docs, b'{"documents": [' + doc + b"]}")
        assert res.status_code == 400, (doc, res.text)
    api.post(docs, json={"documents": [{"id": "a", "text": "heat flow in slabs", "metadata": {"tags": ["x", "y"]}},
                                       {"id": "b", "text": "wing flutter", "metadata": {"tags": ["x", "y"]}}]})
    assert api.get("/v1/collections/strict").json()["count"] == 2
    search = "/v1/collections/strict/search"
    assert raw("POST", search, b'{"query": ' + surrogate + b"}").status_code == 400
    huge = {"$or": [{"n": i} for i in range(999)]}
    assert_openai_error(api.post(search, json={"query": "heat", "where": huge}), 400)
    assert_openai_error(api.post(docs + "/delete", json={"where": huge}), 400)
    assert_openai_error(api.post(search, json={"query": "heat", "where": {"n": {"$gt": 10**30}}}), 400)
    assert_openai_error(api.post(docs + "/delete", json={"where": {"n": 10**30}}), 400)
    for path in ("/v1/collections/%ED%A0%80", "/v1/collections/%FF", docs + "?ids=%ED%A0%80", docs + "?ids=%FF"):
        res = api.get(path)  # bytes that are not UTF-8 (a CESU surrogate, a stray byte) in the path or query
        assert res.status_code in (200, 400, 404), (path, res.text)  # the query's bytes read as U+FFFD
    assert api.get("/v1/collections/strict").json()["count"] == 2
    grouped = api.post(search, json={"query": "heat", "k": 5, "group_by": "tags"})
    assert grouped.status_code == 200 and len(grouped.json()["data"]) == 1  # both records share one tag list
    from pathlib import Path

    from embedsmith.store.settings import is_postgres

    if is_postgres(backend_settings.store):
        return  # a damaged SQLite file beside good ones (PostgreSQL's verify has its own tests)
    bad = Path(backend_settings.store) / "broken"
    bad.mkdir()
    (bad / "collection.sqlite").write_bytes(b"not a database" * 100)
    listing = api.get("/v1/collections")
    assert listing.status_code == 200, listing.text
    assert "strict" in [c["name"] for c in listing.json()["data"]]
    assert [u["name"] for u in listing.json()["unreadable"]] == ["broken"]
    import shutil

    shutil.rmtree(bad)


RECREATE = """
import sys
from embedsmith import delete_collection, load_encoder, open_collection
delete_collection("g", store=sys.argv[1])
with open_collection("g", store=sys.argv[1], encoder=load_encoder("minilm", backend="onnx")) as c:
    c.add(["a record of the new collection"], ids=["new"])
"""


def test_write_after_another_process_replaced_the_collection_is_not_lost(minilm_onnx, store):
    """The server holds collection g; another process deletes and recreates it. The next write must land in the
    new g (it used to be acknowledged into the old, unlinked database, and lost)."""
    import subprocess
    import sys

    app = create_app(ServerSettings(store=store), encoders={"minilm": minilm_onnx})
    with serving(app) as base:
        api = httpx.Client(base_url=base)
        api.post("/v1/collections", json={"name": "g"}).raise_for_status()
        api.post("/v1/collections/g/documents", json={"documents": DOCS[:2]}).raise_for_status()
        subprocess.run([sys.executable, "-c", RECREATE, store], check=True, capture_output=True)
        res = api.put("/v1/collections/g/documents", json={"documents": [{"id": "late", "text": "written after"}]})
        assert res.status_code == 200, res.text
        assert api.get("/v1/collections/g").json()["count"] == 2
    with open_collection("g", store=store) as c:
        assert sorted(r["id"] for r in c.get(["new", "late", DOCS[0]["id"]])) == ["late", "new"]


def test_tokenize_matches_the_models_own_tokenizer(url):
    from transformers import AutoTokenizer

    from embedsmith.encoders.registry import _minilm_folder

    reference = AutoTokenizer.from_pretrained(str(_minilm_folder()), local_files_only=True)
    texts = ["A cat sits on the mat.", "Heat transfer in composite slabs, 1962."]
    res = httpx.post(url + "/tokenize", json={"input": texts})
    assert res.status_code == 200, res.text
    body = res.json()
    assert body["tokens"] == reference(texts)["input_ids"] and body["counts"] == [len(t) for t in body["tokens"]]
    bare = httpx.post(url + "/tokenize", json={"input": texts[0], "add_special_tokens": False}).json()
    assert bare["tokens"] == [reference(texts[0], add_special_tokens=False)["input_ids"]]
    assert_openai_error(httpx.post(url + "/tokenize", json={"input": []}), 400, param="input")
    assert_openai_error(httpx.post(url + "/tokenize", json={"input": "x", "model": "gpt"}), 404, param="model")
    raw = httpx.post(url + "/tokenize", content=b'{"input": "\\ud800"}', headers={"Content-Type": "application/json"})
    assert_openai_error(raw, 400, param="input")


def test_a_request_above_max_batch_is_split_never_refused(minilm_onnx):
    texts = [f"note {i} on {w}" for i, w in enumerate(["cats", "wings", "heat", "rates"] * 3)]

    async def run() -> tuple[np.ndarray, list[int], EmbeddingBatcher]:
        batcher = EmbeddingBatcher(minilm_onnx, max_batch=5, max_wait_s=0.0)
        try:
            vectors, lengths = await batcher.embed(texts)
        finally:
            await batcher.stop()
        return vectors, lengths, batcher

    vectors, lengths, batcher = asyncio.run(run())
    assert batcher.stats.batches == 3 and batcher.stats.texts == 12
    np.testing.assert_allclose(vectors, minilm_onnx.encode(texts), atol=1e-5)
    assert lengths == minilm_onnx.count_tokens(texts)


def test_truncate_and_truncation_direction(url, minilm_onnx, minilm_torch):
    """Default: cut at the right, the tokens cut listed per input; truncate=false: 413 naming the input;
    truncation_direction=left: the text's end, as sentence-transformers gives with truncation_side='left'."""
    words = "heat transfer in a boundary layer over a flat plate at high speed".split()
    long_text = " ".join(words[i % len(words)] + str(i) for i in range(150))
    short = "wing flutter"
    n_long = minilm_onnx.count_tokens([long_text])[0]
    limit = minilm_onnx.max_tokens
    assert n_long > limit
    api = httpx.Client(base_url=url, timeout=60)
    res = api.post("/v1/embeddings", json={"input": [short, long_text]})
    assert res.status_code == 200, res.text
    usage = res.json()["usage"]
    assert usage["truncated_tokens"] == [0, n_long - limit]
    assert usage["prompt_tokens"] == minilm_onnx.count_tokens([short])[0] + limit
    right = np.array(res.json()["data"][1]["embedding"])
    np.testing.assert_allclose(right, minilm_onnx.encode([long_text])[0], atol=1e-5)

    refused = api.post("/v1/embeddings", json={"input": [short, long_text], "truncate": False})
    body = assert_openai_error(refused, 413, param="input")
    assert "input[1]" in body["message"] and str(n_long) in body["message"]
    ok = api.post("/v1/embeddings", json={"input": short, "truncate": False})
    assert ok.status_code == 200 and ok.json()["usage"]["truncated_tokens"] == [0]

    left = api.post("/v1/embeddings", json={"input": long_text, "truncation_direction": "left"})
    assert left.status_code == 200 and left.json()["usage"]["truncated_tokens"] == [n_long - limit]
    got = np.array(left.json()["data"][0]["embedding"])
    st = minilm_torch.model
    st.tokenizer.truncation_side = "left"
    try:
        expected = st.encode([long_text], normalize_embeddings=True)[0]
    finally:
        st.tokenizer.truncation_side = "right"
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert float(got @ right) < 0.99  # the two ends are different texts
    bad = api.post("/v1/embeddings", json={"input": short, "truncation_direction": "middle"})
    assert_openai_error(bad, 422, param="truncation_direction")
