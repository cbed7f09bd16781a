"""The search page, liveness and Prometheus metrics."""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from typing import Any

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, PlainTextResponse

from .. import schemas as s
from ..deps import ServiceDep

router = APIRouter()


@cache
def _page() -> str:
    return (files("embedsmith") / "server" / "static" / "index.html").read_text(encoding="utf-8")


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def index() -> HTMLResponse:
    return HTMLResponse(_page())


@router.get("/health", response_model=s.Health, tags=["service"])
async def health(service: ServiceDep) -> dict[str, Any]:
    """Liveness: always open, even with an API key."""
    return {"status": "ok", "models": list(service.encoders), "reranker": service.reranker_name}


@router.get("/metrics", response_class=PlainTextResponse, tags=["service"],
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}})
async def metrics(service: ServiceDep) -> PlainTextResponse:
    """Prometheus text format: requests, latency histogram, batch sizes, queue depth."""
    return PlainTextResponse(service.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
