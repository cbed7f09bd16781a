"""OpenAI's embeddings and models endpoints, and TEI/infinity's /tokenize."""

from __future__ import annotations

import base64
import time
from typing import Any

import orjson
from fastapi import APIRouter
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from ...types import Kind
from .. import schemas as s
from ..deps import ServiceDep
from ..errors import APIError
from ..service import Service

router = APIRouter()
_STARTED = int(time.time())


def _texts(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else value


@router.post("/v1/embeddings", response_model=s.EmbeddingResponse, tags=["embeddings"])
async def embeddings(body: s.EmbeddingRequest, service: ServiceDep) -> Response:
    """OpenAI's embeddings API: unit-length vectors, float lists or base64 float32."""
    name = service.model_name(body.model)
    texts = _texts(body.input)
    service.check_texts(texts, "input")
    kind = Kind(body.input_type) if body.input_type else None
    vectors, used, cut = await service.embed(name, texts, kind=kind, dims=body.dimensions, truncate=body.truncate,
                                             side=body.truncation_direction)
    # orjson writes the float32 rows straight from numpy (shortest float32 form, which reads back exactly):
    # ~17x faster than tolist() + json and ~45% smaller; pydantic would cost more than the encoder.
    rows: Any = vectors
    if body.encoding_format == "base64":
        rows = [base64.b64encode(v.astype("<f4").tobytes()).decode("ascii") for v in vectors]
    data = [{"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(rows)]
    usage = {"prompt_tokens": used, "total_tokens": used, "truncated_tokens": cut}
    return Response(orjson.dumps({"object": "list", "data": data, "model": name, "usage": usage},
                                 option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")


@router.post("/tokenize", response_model=s.TokenizeResponse, tags=["embeddings"])
async def tokenize(body: s.TokenizeRequest, service: ServiceDep) -> dict[str, Any]:
    """Token ids per input, from the served model's own tokenizer (as TEI and infinity answer)."""
    name = service.model_name(body.model)
    texts = _texts(body.input)
    service.check_texts(texts, "input")
    tokenizer = getattr(service.encoders[name], "fast_tokenizer", None)
    if tokenizer is None:
        raise APIError(400, f"model {name!r} has no tokenizer to show (its backend counts words)", param="model",
                       code="no_tokenizer")
    encoded = await run_in_threadpool(tokenizer.encode_batch, texts, add_special_tokens=body.add_special_tokens)
    ids = [list(e.ids) for e in encoded]
    return {"object": "list", "model": name, "tokens": ids, "counts": [len(x) for x in ids]}


def model_cards(service: Service) -> list[dict[str, Any]]:
    cards = [{"id": name, "object": "model", "created": _STARTED, "owned_by": "embedsmith", "type": "embedding",
              "dim": enc.dim, "max_tokens": enc.max_tokens, "fingerprint": enc.fingerprint}
             for name, enc in service.encoders.items()]
    if service.reranker is not None:
        cards.append({"id": service.reranker_name, "object": "model", "created": _STARTED,
                      "owned_by": "embedsmith", "type": "rerank", "dim": None,
                      "max_tokens": service.reranker.max_length, "fingerprint": None})
    return cards


@router.get("/v1/models", response_model=s.ModelList, tags=["models"])
async def list_models(service: ServiceDep) -> dict[str, Any]:
    """The served models, in OpenAI's shape (with dim, max_tokens and fingerprint added)."""
    return {"object": "list", "data": model_cards(service)}


@router.get("/v1/models/{model_id}", response_model=s.ModelCard, tags=["models"])
async def get_model(model_id: str, service: ServiceDep) -> dict[str, Any]:
    for card in model_cards(service):
        if card["id"] == model_id:
            return card
    raise APIError(404, f"model {model_id!r} is not served here", param="model", code="model_not_found")
