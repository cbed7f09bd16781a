"""The ``openai:MODEL@BASE_URL`` encoder against our own server, and its retries against a scripted transport."""

from __future__ import annotations

import base64
import json

import httpx
import numpy as np
import pytest

from conftest import SEED, serving
from embedsmith import InvalidInputError, ModelNotFoundError, load_encoder, open_collection
from embedsmith.encoders.openai_compat import OpenAICompatEncoder, RemoteEncoderError, parse_openai_name
from embedsmith.server import ServerSettings, create_app


@pytest.fixture(scope="module")
def url(minilm_onnx, tmp_path_factory):  # type: ignore[no-untyped-def]
    settings = ServerSettings(store=str(tmp_path_factory.mktemp("store")), api_key="k-123", max_inputs=16)
    with serving(create_app(settings, encoders={"minilm": minilm_onnx})) as base:
        yield base + "/v1"


def test_remote_encoder_matches_the_local_model(url, minilm_onnx, monkeypatch, tmp_path):
    monkeypatch.setenv("OPENAI_API_KEY", "k-123")
    enc = load_encoder(f"openai:minilm@{url}")
    assert isinstance(enc, OpenAICompatEncoder)
    assert (enc.dim, enc.max_tokens, enc.fingerprint) == (384, minilm_onnx.max_tokens, minilm_onnx.fingerprint)
    texts = [f"{s} ({i})" for i in range(7) for s in SEED]  # 21 texts: two requests of 16 and 5 (server limit 16)
    enc.default_batch_size = 16
    np.testing.assert_allclose(enc.encode(texts), minilm_onnx.encode(texts), atol=1e-5)
    np.testing.assert_allclose(enc.encode(SEED, dims=32), minilm_onnx.encode(SEED, dims=32), atol=1e-5)
    assert enc.count_tokens(["two words."]) == [3]  # approximate: words and punctuation

    # A collection can be built through the server; its fingerprint matches the local model's.
    with open_collection("remote", store=tmp_path, encoder=enc) as c:
        c.add(SEED, ids=["a", "b", "c"])
        assert c.search("a kitten on a carpet", k=1).ids in (["a"], ["b"])
    with open_collection("remote", store=tmp_path, encoder=minilm_onnx) as c:  # same weights: accepted
        assert c.count() == 3
    enc.close()


def test_remote_encoder_errors(url, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(RemoteEncoderError, match="refused the API key"):
        OpenAICompatEncoder("minilm", url, api_key="wrong")
    with pytest.raises(ModelNotFoundError, match="not served here"):
        OpenAICompatEncoder("gpt-x", url, api_key="k-123")
    enc = OpenAICompatEncoder("minilm", url, api_key="k-123")
    with pytest.raises(InvalidInputError, match="the limit is 16"):
        enc.encode(["x"] * 20, batch_size=20)
    with pytest.raises(InvalidInputError, match="texts\\[0\\] is empty"):
        enc.encode([""])  # checked before any request
    for bad in ("openai:", "openai:m@ftp://x", "minilm"):
        with pytest.raises(InvalidInputError):
            parse_openai_name(bad)
    assert parse_openai_name("openai:text-embedding-3-small") == ("text-embedding-3-small",
                                                                   "https://api.openai.com/v1")


def _vectors_answer(request: httpx.Request, dim: int = 4) -> httpx.Response:
    texts = json.loads(request.content)["input"]
    data = [{"object": "embedding", "index": i,
             "embedding": base64.b64encode(np.full(dim, i + 1, "<f4").tobytes()).decode()} for i in range(len(texts))]
    return httpx.Response(200, json={"object": "list", "data": data, "model": "m", "usage": {}})


def test_retries_with_backoff_then_succeeds():
    calls: list[str] = []
    script = [httpx.Response(503, json={"error": {"message": "warming up"}}),
              httpx.Response(429, headers={"Retry-After": "0"}, json={"error": {"message": "slow down"}})]

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if request.url.path.endswith("/models/m"):
            return httpx.Response(404)
        if script:
            return script.pop(0)
        return _vectors_answer(request)

    enc = OpenAICompatEncoder("m", "http://remote.test/v1", api_key="", dim=4, backoff=0.001,
                              transport=httpx.MockTransport(handler))
    out = enc.encode(["a", "b", "c"], normalize=False, batch_size=2)
    np.testing.assert_array_equal(out, [[1] * 4, [2] * 4, [1] * 4])
    assert calls.count("/v1/embeddings") == 4  # 503, 429, then two batches
    assert enc.fingerprint == "openai:m@http://remote.test/v1" and enc.max_tokens == 8192


def test_gives_up_after_the_retries():
    def timeout(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/embeddings"):
            raise httpx.ReadTimeout("too slow", request=request)
        return httpx.Response(404)

    enc = OpenAICompatEncoder("m", "http://remote.test/v1", dim=4, retries=2, backoff=0.001,
                              transport=httpx.MockTransport(timeout))
    with pytest.raises(RemoteEncoderError, match="failed after 3 attempts: ReadTimeout"):
        enc.encode(["a"])

    def broken(request: httpx.Request) -> httpx.Response:
        return httpx.Response(500, json={"error": {"message": "boom"}}) if request.url.path.endswith(
            "/embeddings") else httpx.Response(404)

    enc = OpenAICompatEncoder("m", "http://remote.test/v1", dim=4, retries=1, backoff=0.001,
                              transport=httpx.MockTransport(broken))
    with pytest.raises(RemoteEncoderError, match="answered 500 after 2 attempts: boom"):
        enc.encode(["a"])
