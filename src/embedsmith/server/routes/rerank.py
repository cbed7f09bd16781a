"""Cohere/Jina-style rerank with the server's cross-encoder, or late interaction (MaxSim) over a served encoder's
token vectors (``model: "maxsim"`` or ``"maxsim:ENCODER"``)."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from ...errors import NoTokenVectorsError
from .. import schemas as s
from ..deps import ServiceDep
from ..errors import APIError

router = APIRouter()


@router.post("/v1/rerank", response_model=s.RerankResponse, response_model_exclude_none=True, tags=["rerank"])
async def rerank(body: s.RerankRequest, service: ServiceDep) -> dict[str, Any]:
    """Documents scored against the query by the cross-encoder; results best first.

    ``model: "maxsim"`` (the default encoder) or ``"maxsim:ENCODER"`` (a served encoder) scores by late
    interaction instead: the mean over the query's tokens of each one's best cosine with a document token, in
    -1..1, given as both ``relevance_score`` and ``relevance_logit``.
    """
    if body.model == "maxsim" or (body.model or "").startswith("maxsim:"):
        return await _maxsim(body, service)
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
    return _answer(body, docs, order, str(service.reranker_name))


def _answer(body: s.RerankRequest, docs: list[str], order: list[tuple[int, float, float]], model: str
            ) -> dict[str, Any]:
    """The Cohere/Jina rerank answer for ``order`` ((index, score, logit) best first)."""
    results = []
    for index, score, logit in order:
        r: dict[str, Any] = {"index": index, "relevance_score": score, "relevance_logit": logit}
        if body.return_documents:
            r["document"] = {"text": docs[index]}
        results.append(r)
    return {"id": uuid.uuid4().hex, "model": model, "results": results}


async def _maxsim(body: s.RerankRequest, service: ServiceDep) -> dict[str, Any]:
    scorer, name = service.late_interaction(str(body.model))
    service.check_query(body.query)
    docs = [d if isinstance(d, str) else d.text for d in body.documents]
    service.check_texts(docs, "documents")
    try:
        order = await run_in_threadpool(scorer.rerank, body.query, docs, top_n=body.top_n)
    except NoTokenVectorsError as exc:  # a served encoder without token states (static, remote)
        raise APIError(400, str(exc), param="model", code="no_token_vectors") from None
    return _answer(body, docs, order, name)  # MaxSim is both the score and the logit
