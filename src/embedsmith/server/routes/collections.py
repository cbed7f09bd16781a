"""Collections: create, list, describe, delete; write, fetch and delete documents; search.

Store calls block (SQLite, PostgreSQL, the encoder), so each runs in the thread pool; the store's typed
errors reach the handlers in :mod:`embedsmith.server.errors` untouched.
"""

from __future__ import annotations

import math
from typing import Any

from fastapi import APIRouter, Query
from starlette.concurrency import run_in_threadpool

from ...errors import StoreError
from .. import schemas as s
from ..deps import ServiceDep
from ..errors import APIError
from ..service import Service

router = APIRouter(prefix="/v1/collections", tags=["collections"])


def _info(coll: Any) -> dict[str, Any]:
    i = coll.info()
    return {"object": "collection", **{k: i[k] for k in ("name", "count", "model", "fingerprint", "dim", "dims",
                                                            "precision", "metric", "disk_bytes")}}


def _hits_json(hits: Any) -> list[dict[str, Any]]:
    out = hits.to_dicts()
    for d in out:
        for key in ("score", "rerank_logit", "first_stage_score"):
            if key in d and d[key] is not None and not math.isfinite(d[key]):
                d[key] = None if key != "score" else 0.0
    return out


@router.get("", response_model=s.CollectionList)
async def list_collections(service: ServiceDep) -> dict[str, Any]:
    """Every collection in the store; one that cannot be read is listed under ``unreadable`` with the reason."""
    from ...store import list_collections as names

    def run() -> dict[str, Any]:
        data, unreadable = [], []
        for n in names(service.settings.store):
            try:
                data.append(_info(service.collection(n)))
            except StoreError as exc:  # one damaged collection must not fail the listing of the others
                unreadable.append({"object": "collection.unreadable", "name": n, "error": str(exc)})
        return {"object": "list", "data": data, "unreadable": unreadable}

    return await run_in_threadpool(run)


@router.post("", response_model=s.CollectionInfo, status_code=201, responses={409: {"model": s.ErrorResponse}})
async def create_collection(body: s.CollectionCreate, service: ServiceDep) -> dict[str, Any]:
    """Create a collection embedded by a served model."""
    return await run_in_threadpool(lambda: _info(service.create_collection(body)))


@router.get("/{name}", response_model=s.CollectionInfo)
async def describe_collection(name: str, service: ServiceDep) -> dict[str, Any]:
    return await run_in_threadpool(lambda: _info(service.collection(name)))


@router.delete("/{name}", response_model=s.Deleted)
async def delete_collection(name: str, service: ServiceDep) -> dict[str, Any]:
    await run_in_threadpool(service.delete_collection, name)
    return {"id": name, "object": "collection", "deleted": True}


def _write(service: Service, name: str, body: s.DocumentsRequest, *, upsert: bool) -> dict[str, Any]:
    service.check_texts([d.text for d in body.documents], "documents")
    records = [{"id": d.id, "text": d.text, "metadata": d.metadata or {}} for d in body.documents]
    if upsert and any(r["id"] is None for r in records):
        missing = next(i for i, r in enumerate(records) if r["id"] is None)
        raise APIError(400, f"documents[{missing}] has no id; upsert needs ids", param="documents")
    coll = service.collection(name)
    ids = coll.upsert(records) if upsert else coll.add(records)
    return {"object": "list", "ids": ids, "count": coll.count()}


@router.post("/{name}/documents", response_model=s.DocumentsWritten)
async def add_documents(name: str, body: s.DocumentsRequest, service: ServiceDep) -> dict[str, Any]:
    """Embed and add documents; an id already present is an error (use PUT to replace)."""
    return await run_in_threadpool(_write, service, name, body, upsert=False)


@router.put("/{name}/documents", response_model=s.DocumentsWritten)
async def upsert_documents(name: str, body: s.DocumentsRequest, service: ServiceDep) -> dict[str, Any]:
    """Embed and add documents, replacing those with the same id."""
    return await run_in_threadpool(_write, service, name, body, upsert=True)


@router.get("/{name}/documents", response_model=s.DocumentList)
async def get_documents(name: str, service: ServiceDep,
                        ids: list[str] = Query(..., description="ids to fetch")) -> dict[str, Any]:  # noqa: B008
    """Documents by id, in the order asked (absent ids are left out)."""
    limit = service.settings.max_inputs
    if len(ids) > limit:
        raise APIError(413, f"ids has {len(ids)} items; the limit is {limit}", param="ids", code="too_many_inputs")
    records = await run_in_threadpool(lambda: service.collection(name).get(ids))
    return {"object": "list", "data": records}


@router.post("/{name}/documents/delete", response_model=s.DocumentsDeleted)
async def delete_documents(name: str, body: s.DocumentsDelete, service: ServiceDep) -> dict[str, Any]:
    """Delete documents by ids or by a metadata filter (exactly one of them)."""

    def run() -> dict[str, Any]:
        coll = service.collection(name)
        n = coll.delete(ids=body.ids, where=body.where)
        return {"object": "deleted", "deleted": n, "count": coll.count()}

    return await run_in_threadpool(run)


def _checked_query(body: s.SearchRequest | s.ContextRequest, service: Service) -> Any:
    """The reranker a search or context request asks for (None), after checking the query."""
    if body.rerank and service.reranker is None:
        raise APIError(400, "rerank=true needs a reranker: start the server with --reranker PATH",
                       param="rerank", code="no_reranker")
    service.check_query(body.query)
    return service.reranker if body.rerank else None


@router.post("/{name}/search", response_model=s.SearchResponse)
async def search(name: str, body: s.SearchRequest, service: ServiceDep) -> dict[str, Any]:
    """Dense, bm25 or hybrid search with filters, optionally reranked by the server's cross-encoder."""
    reranker = _checked_query(body, service)

    def run() -> dict[str, Any]:
        coll = service.collection(name)
        hits = coll.search(body.query, k=body.k, mode=body.mode, where=body.where, fusion=body.fusion,
                           alpha=body.alpha, candidates=body.candidates, group_by=body.group_by,
                           rerank=reranker, diversity=body.diversity,
                           dedup=body.dedup, boost=body.boost, decay=body.decay,
                           min_relevance=body.min_relevance)
        return {"object": "list", "collection": name, "query": body.query, "mode": body.mode,
                "data": _hits_json(hits)}

    return await run_in_threadpool(run)


@router.post("/{name}/context", response_model=s.ContextResponse)
async def context(name: str, body: s.ContextRequest, service: ServiceDep) -> dict[str, Any]:
    """The best passages for a question, merged, cited and within a token budget (the collection model's tokens)."""
    reranker = _checked_query(body, service)

    def run() -> dict[str, Any]:
        coll = service.collection(name)
        ctx = coll.context(body.query, budget_tokens=body.budget_tokens, k=body.k, mode=body.mode, where=body.where,
                           rerank=reranker, widen=body.widen, format=body.format)
        return {"object": "context", "collection": name, "query": body.query, **ctx.to_dict(),
                "markdown": ctx.to_markdown() if body.format == "markdown" else None}

    return await run_in_threadpool(run)
