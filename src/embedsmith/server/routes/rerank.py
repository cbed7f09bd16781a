"""Cohere/Jina-style rerank with the server's cross-encoder."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from .. import schemas as s
from ..deps import ServiceDep
from ..errors import APIError

router = APIRouter()


@router.post("/v1/rerank", response_model=s.RerankResponse, response_model_exclude_none=True, tags=["rerank"])
async def rerank(body: s.RerankRequest, service: ServiceDep) -> dict[str, Any]:
    """Documents scored against the query by the cross-encoder; results best first."""
    if service.reranker is None:
        raise APIError(404, "no reranker is loaded: start the server with --reranker PATH", param="model",
                       code="model_not_found")
    if body.model and body.model != service.reranker_name:
        raise APIError(404, f"reranker {body.model!r} is not served here; served: {service.reranker_name}",
                       param="model", code="model_not_found")
    service.check_query(body.query)
    docs = [d if isinstance(d, str) else d.text for d in body.documents]
    service.check_texts(docs, "documents")
    order = await run_in_threadpool(service.reranker.rerank, body.query, docs, top_n=body.top_n)
    results = []
    for index, prob, logit in order:
        r: dict[str, Any] = {"index": index, "relevance_score": prob, "relevance_logit": logit}
        if body.return_documents:
            r["document"] = {"text": docs[index]}
        results.append(r)
    return {"id": uuid.uuid4().hex, "model": service.reranker_name, "results": results}
