"""The FastAPI application: OpenAI-compatible embeddings, rerank, collections, metrics and a search page.

Build it with :func:`create_app`; ``embedsmith serve`` runs it under uvicorn. The pieces:
``settings`` (what can be set), ``service`` (models, batchers, limits, open collections), ``deps`` (Host check,
API key, body limit), ``errors`` (the typed-error -> HTTP status table) and ``routes/`` (one router per group).
"""

from __future__ import annotations

import os
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from ..errors import InvalidInputError
from ..types import Encoder
from . import schemas as s
from .deps import ServiceMiddleware, host_name, served_hosts
from .errors import APIError, install_handlers
from .routes import collections, embeddings, ops, rerank
from .service import Service, load_models, load_reranker
from .settings import ServerSettings

_COMMON = {status: {"model": s.ErrorResponse} for status in (400, 401, 403, 404, 413, 422, 429, 503)}


def create_app(settings: ServerSettings | None = None, *, encoders: dict[str, Encoder] | None = None,
               reranker: Any | None = None) -> FastAPI:
    """Build the application.

    Args:
        settings: limits, models, store and key (default :class:`ServerSettings`).
        encoders: already loaded encoders by served name (default: loaded from ``settings.models``).
        reranker: an already loaded :class:`~embedsmith.rerankers.Reranker` (default: ``settings.reranker``).
    """
    settings = settings or ServerSettings()
    if encoders is None:
        encoders, loaded = load_models(settings)
        reranker = reranker or loaded
    elif reranker is None:
        reranker = load_reranker(settings)
    service = Service(settings, encoders, reranker)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> Any:
        for b in service.batchers.values():
            b.start()
        yield
        for b in service.batchers.values():
            await b.stop()
        service.close()

    app = FastAPI(
        title="embedsmith", version=_version(), lifespan=lifespan, responses=_COMMON,  # type: ignore[arg-type]
        description="OpenAI-compatible embeddings, rerank and vector collections, served offline by embedsmith.",
    )
    app.state.service = service
    app.add_middleware(ServiceMiddleware, api_key=settings.api_key, hosts=served_hosts(settings),
                       max_body_bytes=settings.max_body_bytes, metrics=service.metrics)
    install_handlers(app)
    for group in (ops, embeddings, rerank, collections):
        app.include_router(group.router)
    return app


def _version() -> str:
    from .. import __version__

    return __version__


def app_from_environment() -> FastAPI:
    """Factory for ``uvicorn --factory`` with several workers: settings travel in $EMBEDSMITH_SERVE_SETTINGS."""
    raw = os.environ.get("EMBEDSMITH_SERVE_SETTINGS")
    if not raw:
        raise InvalidInputError("EMBEDSMITH_SERVE_SETTINGS is not set; start the server with `embedsmith serve`")
    return create_app(ServerSettings.from_json(raw))


__all__ = ["APIError", "ServerSettings", "app_from_environment", "create_app", "host_name"]
