"""The FastAPI application: OpenAI-compatible embeddings, rerank, collections, metrics and a search page.

Build it with :func:`create_app`; ``embedsmith serve`` runs it under uvicorn. Nothing imports this module.
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import math
import os
import threading
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import (
    CollectionBusyError,
    CollectionExistsError,
    CollectionNotFoundError,
    EmbedsmithError,
    InvalidInputError,
    MissingExtraError,
    ModelNotFoundError,
    SettingsMismatchError,
    StoreError,
    StoreReadOnlyError,
)
from ..store.validate import check_string
from ..types import Encoder, Kind
from . import schemas as s
from .batching import EmbeddingBatcher, QueueFullError
from .metrics import ServiceMetrics, histogram_lines, sample_lines

log = logging.getLogger("embedsmith.server")
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]
_STARTED = int(time.time())
# Paths served without the API key: the liveness probe, and the search page's static HTML (it holds no data;
# it asks for the key and sends it with every API call).
PUBLIC_PATHS = frozenset({"/health", "/"})


@dataclass
class ServerSettings:
    """Everything ``embedsmith serve`` can set. Limits apply per request.

    Attributes:
        models: encoder aliases or folders to serve; the first is the default.
        backend: encoder backend ('auto', 'onnx', 'onnx-int8', 'torch').
        reranker: a cross-encoder folder for /v1/rerank and reranked search, or None.
        store: the collections folder (default: embedsmith's default store).
        api_key: when set, every endpoint but /health and the page's HTML needs ``Authorization: Bearer KEY``.
            An empty key is refused (it would silently mean "no auth").
        host: the interface the server binds. Without a key, only requests whose ``Host`` is this host,
            ``127.0.0.1``, ``localhost`` or ``[::1]`` (or one of ``allowed_hosts``) are served, so a web page
            the user visits cannot drive the local API through DNS rebinding; others get 403.
        allowed_hosts: more ``Host`` names to accept without a key (e.g. the machine's name on a LAN).
        max_inputs: texts per embeddings request (and documents per rerank or write).
        max_input_chars: characters per text.
        max_body_bytes: request body size.
        max_batch: texts per coalesced encoder call.
        batch_wait_ms: how long a request waits for others to share its batch.
        max_queue: texts waiting per model before requests get 429.
        threads: encoder CPU threads (default: all cores).
    """

    models: list[str] = field(default_factory=lambda: ["minilm"])
    backend: str = "auto"
    reranker: str | None = None
    store: str | None = None
    api_key: str | None = None
    host: str = "127.0.0.1"
    allowed_hosts: list[str] = field(default_factory=list)
    max_inputs: int = 2048
    max_input_chars: int = 32_768
    max_body_bytes: int = 16 * 1024 * 1024
    max_batch: int = 128
    batch_wait_ms: float = 2.0
    max_queue: int = 16_384
    threads: int | None = None

    def __post_init__(self) -> None:
        if not self.models:
            raise InvalidInputError("serve needs at least one model")
        for name in ("max_inputs", "max_input_chars", "max_body_bytes", "max_batch", "max_queue"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise InvalidInputError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.batch_wait_ms, (int, float)) or not 0 <= self.batch_wait_ms <= 1000:
            raise InvalidInputError(f"batch_wait_ms must be between 0 and 1000, got {self.batch_wait_ms!r}")
        if self.api_key is not None and not self.api_key.strip():
            raise InvalidInputError("api_key is empty")

    def __repr__(self) -> str:  # never show the key
        shown = {**asdict(self), "api_key": "***" if self.api_key else None}
        return f"ServerSettings({shown})"

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ServerSettings:
        return cls(**json.loads(text))


class APIError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers


class BodyTooLargeError(StarletteHTTPException):
    """Raised while reading a body past the limit (an HTTPException so FastAPI's body reader lets it through)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body is larger than the limit of {limit} bytes")


_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found_error",
                405: "invalid_request_error", 409: "conflict_error", 413: "request_too_large",
                422: "invalid_request_error", 429: "rate_limit_error", 500: "server_error",
                503: "service_unavailable"}


def error_json(status: int, message: str, *, type: str | None = None, param: str | None = None,
               code: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": type or _ERROR_TYPES.get(status, "invalid_request_error"),
                      "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


# The library's typed errors -> (HTTP status, OpenAI-style code), most specific first; README has the table.
_STATUSES: tuple[tuple[type[EmbedsmithError], int, str | None], ...] = (
    (QueueFullError, 429, "queue_full"),
    (SettingsMismatchError, 409, "settings_mismatch"),
    (ModelNotFoundError, 404, "model_not_found"),
    (CollectionNotFoundError, 404, "collection_not_found"),
    (CollectionExistsError, 409, "collection_exists"),
    (CollectionBusyError, 409, "collection_busy"),
    (StoreReadOnlyError, 403, "store_read_only"),
    (StoreError, 503, "store_error"),
    (MissingExtraError, 501, "missing_extra"),
)


def _library_error(exc: EmbedsmithError) -> tuple[int, str | None]:
    """HTTP status and error code for an error raised by the library (400 for bad values and the rest)."""
    return next(((status, code) for kind, status, code in _STATUSES if isinstance(exc, kind)), (400, None))


def host_name(value: str) -> str:
    """The host of a ``Host`` header or address, lower-cased, without its port; IPv6 in brackets."""
    h = value.strip().lower()
    if h.startswith("["):
        return h[: h.find("]") + 1] if "]" in h else h
    if h.count(":") > 1:  # a bare IPv6 address (a bind address, not a header)
        return f"[{h}]"
    return h.rsplit(":", 1)[0]


def served_hosts(settings: ServerSettings) -> frozenset[str]:
    """The ``Host`` names a server without a key answers: loopback names, the bound host, the allowed ones."""
    names = {"127.0.0.1", "localhost", "[::1]", host_name(settings.host), *map(host_name, settings.allowed_hosts)}
    return frozenset(names)


class ServiceMiddleware:
    """API key, body size limit and request metrics, in one pure ASGI layer (cheap per request)."""

    def __init__(self, app: ASGIApp, *, api_key: str | None, max_body_bytes: int, metrics: ServiceMetrics,
                 hosts: frozenset[str] = frozenset()) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode() if api_key else None
        self.hosts = hosts  # checked only without a key
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Message]],
                       send: Callable[[Message], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            if self.expected is None and not self._known_host(scope):
                await self._reply(send_wrapper, error_json(
                    403, "this server has no API key and answers only requests addressed to its own host "
                    "(Host 127.0.0.1, localhost, [::1] or the bound host); add --allowed-host NAME or set "
                    "EMBEDSMITH_API_KEY to serve others", code="forbidden_host"), scope, receive)
                return
            if self.expected is not None and scope["path"] not in PUBLIC_PATHS and not self._authorized(scope):
                await self._reply(send_wrapper, error_json(
                    401, "missing or wrong API key: send 'Authorization: Bearer KEY'", code="invalid_api_key",
                    headers={"WWW-Authenticate": "Bearer"}), scope, receive)
                return
            length = next((v for k, v in scope["headers"] if k == b"content-length"), None)
            if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
                await self._reply(send_wrapper, error_json(
                    413, f"request body is {int(length)} bytes; the limit is {self.max_body_bytes}",
                    code="body_too_large"), scope, receive)
                return
            seen = 0
            limit = self.max_body_bytes

            async def receive_limited() -> Message:
                nonlocal seen
                message = await receive()
                if message["type"] == "http.request":
                    seen += len(message.get("body", b""))
                    if seen > limit:
                        raise BodyTooLargeError(limit)
                return message

            await self.app(scope, receive_limited, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or ("unmatched" if status[0] == 404 else scope["path"]
                                                    if scope["path"] in PUBLIC_PATHS else "other")
            self.metrics.observe(scope["method"], path, status[0], time.perf_counter() - start)

    def _known_host(self, scope: Scope) -> bool:
        raw = next((v for k, v in scope["headers"] if k == b"host"), None)
        return raw is not None and host_name(raw.decode("latin-1")) in self.hosts

    def _authorized(self, scope: Scope) -> bool:
        got = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
        assert self.expected is not None
        return hmac.compare_digest(got, self.expected)

    @staticmethod
    async def _reply(send: Callable[[Message], Awaitable[None]], response: Response, scope: Scope,
                     receive: Callable[[], Awaitable[Message]]) -> None:
        await response(scope, receive, send)


class Service:
    """The state behind the routes: encoders and their batchers, the reranker, open collections."""

    def __init__(self, settings: ServerSettings, encoders: dict[str, Encoder], reranker: Any | None) -> None:
        self.settings = settings
        self.encoders = encoders
        self.default_model = next(iter(encoders))
        self.reranker = reranker
        self.reranker_name = Path(str(reranker.path)).name if reranker is not None else None
        wait = settings.batch_wait_ms / 1000
        self.batchers = {name: EmbeddingBatcher(enc, max_batch=settings.max_batch, max_wait_s=wait,
                                                max_queue=settings.max_queue) for name, enc in encoders.items()}
        self.metrics = ServiceMetrics()
        self.metrics.add_collector(self._batcher_lines)
        self._collections: dict[str, Any] = {}
        self._collections_lock = threading.Lock()
        self._rerank_lock = threading.Lock()

    # -- models -----------------------------------------------------------------------------------
    def model_name(self, requested: str | None) -> str:
        if requested is None or requested == "":
            return self.default_model
        if requested in self.encoders:
            return requested
        for name, enc in self.encoders.items():
            if requested == enc.name:
                return name
        raise APIError(404, f"model {requested!r} is not served here; served: {', '.join(self.encoders)}",
                       param="model", code="model_not_found")

    def check_texts(self, texts: list[str], param: str) -> None:
        limit = self.settings.max_inputs
        if len(texts) > limit:
            raise APIError(413, f"{param} has {len(texts)} items; the limit is {limit} per request",
                           param=param, code="too_many_inputs")
        chars = self.settings.max_input_chars
        for i, t in enumerate(texts):
            try:
                check_string(t, f"{param}[{i}]")
            except InvalidInputError as exc:  # a lone surrogate or NUL: not text any encoder or store can take
                raise APIError(400, str(exc), param=param, code="invalid_text") from None
            if len(t) > chars:
                raise APIError(422, f"{param}[{i}] has {len(t)} characters; the limit is {chars}",
                               param=param, code="input_too_long")
            if not t.strip():
                raise APIError(400, f"{param}[{i}] is empty", param=param, code="empty_input")

    # -- collections --------------------------------------------------------------------------------
    def _served_encoder_for(self, fingerprint: str | None) -> Encoder | None:
        from ..store.settings import fingerprints_compatible

        if not fingerprint:
            return None
        return next((e for e in self.encoders.values() if fingerprints_compatible(fingerprint, e.fingerprint)), None)

    def collection(self, name: str) -> Any:
        """An open collection (cached), using a served encoder when it is the collection's model."""
        from ..store import open_collection

        with self._collections_lock:
            coll = self._collections.get(name)
            if coll is not None:
                if coll.is_current():
                    return coll
                self._collections.pop(name).close()  # deleted or replaced behind our back
            coll = open_collection(name, store=self.settings.store, create=False)
            enc = self._served_encoder_for(coll.settings.fingerprint)
            if enc is not None:
                coll.close()
                coll = open_collection(name, store=self.settings.store, create=False, encoder=enc)
            self._collections[name] = coll
            return coll

    def create_collection(self, body: s.CollectionCreate) -> Any:
        from ..store import list_collections, open_collection

        model = self.model_name(body.model)
        with self._collections_lock:
            if body.name in list_collections(self.settings.store):
                raise APIError(409, f"collection {body.name!r} already exists", param="name",
                               code="collection_exists")
            coll = open_collection(body.name, store=self.settings.store, encoder=self.encoders[model],
                                   metric=body.metric, precision=body.precision, dims=body.dims)
            self._collections[body.name] = coll
            return coll

    def delete_collection(self, name: str) -> None:
        from ..store import delete_collection, list_collections, open_collection

        with self._collections_lock:
            coll = self._collections.pop(name, None)
            if coll is not None:
                coll.close()
            if name not in list_collections(self.settings.store):
                open_collection(name, store=self.settings.store, create=False)  # the library's own error
            delete_collection(name, store=self.settings.store)

    def close(self) -> None:
        with self._collections_lock:
            for coll in self._collections.values():
                coll.close()
            self._collections.clear()

    # -- metrics ------------------------------------------------------------------------------------
    def _batcher_lines(self) -> list[str]:
        lines: list[str] = []
        depth = [([("model", n)], float(b.queue_depth)) for n, b in self.batchers.items()]
        lines += sample_lines("embedsmith_queue_depth", "Texts waiting for an encoder batch.", "gauge", depth)
        texts = [([("model", n)], float(b.stats.texts)) for n, b in self.batchers.items()]
        lines += sample_lines("embedsmith_embedded_texts_total", "Texts encoded by /v1/embeddings.", "counter", texts)
        tokens = [([("model", n)], float(b.stats.tokens)) for n, b in self.batchers.items()]
        lines += sample_lines("embedsmith_embedded_tokens_total", "Tokens in texts encoded by /v1/embeddings.",
                              "counter", tokens)
        for n, b in self.batchers.items():
            st = b.stats
            lines += histogram_lines("embedsmith_batch_size", "Texts per coalesced encoder call.", [("model", n)],
                                     st.size_buckets, st.size_counts, st.texts, st.batches)
        return _merge_families(lines)


def _merge_families(lines: list[str]) -> list[str]:
    """One HELP/TYPE header per metric family, however many label sets (Prometheus requires it)."""
    out: list[str] = []
    seen: set[str] = set()
    for line in lines:
        if line.startswith("# "):
            key = " ".join(line.split()[:3])
            if key in seen:
                continue
            seen.add(key)
        out.append(line)
    return out


_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "dict", "list", "none"})


def request_path(request: Request) -> str:
    return str(request.scope.get("path", ""))


_COMMON = {status: {"model": s.ErrorResponse} for status in (400, 401, 404, 413, 422, 429)}


def _hits_json(hits: Any) -> list[dict[str, Any]]:
    out = hits.to_dicts()
    for d in out:
        for key in ("score", "rerank_logit", "first_stage_score"):
            if key in d and d[key] is not None and not math.isfinite(d[key]):
                d[key] = None if key != "score" else 0.0
    return out


def load_models(settings: ServerSettings) -> tuple[dict[str, Encoder], Any | None]:
    """Load the encoders and reranker that ``settings`` names (from local folders only)."""
    from ..encoders import load_encoder

    encoders: dict[str, Encoder] = {}
    for name in settings.models:
        encoders[name] = load_encoder(name, backend=settings.backend, threads=settings.threads)
    reranker = None
    if settings.reranker:
        from ..rerankers import Reranker

        reranker = Reranker(settings.reranker, threads=settings.threads)
    return encoders, reranker


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
    elif reranker is None and settings.reranker:
        from ..rerankers import Reranker

        reranker = Reranker(settings.reranker, threads=settings.threads)
    if not encoders:
        raise InvalidInputError("serve needs at least one encoder")
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

    # -- errors ------------------------------------------------------------------------------------
    @app.exception_handler(APIError)
    async def _api_error(_r: Request, exc: APIError) -> JSONResponse:
        return error_json(exc.status, exc.message, type=exc.type, param=exc.param, code=exc.code, headers=exc.headers)

    @app.exception_handler(EmbedsmithError)
    async def _library(_r: Request, exc: EmbedsmithError) -> JSONResponse:
        status, code = _library_error(exc)
        headers = {"Retry-After": "1"} if status == 429 else None
        return error_json(status, str(exc), code=code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_r: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        # Union members show up in pydantic's location ('str', 'list[str]', 'RerankDocument'): not field names.
        loc = [str(x) for x in first.get("loc", ())[1:]
               if not (isinstance(x, str) and (x in _TYPE_TAGS or "[" in x or x[:1].isupper()))]
        where = ".".join(loc) or "body"
        if loc[:1] == ["input"] and request_path(_r) == "/v1/embeddings":
            message = "input must be a text or a list of texts (token arrays are not accepted)"
        else:
            more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
            message = f"{where}: {first.get('msg', 'invalid')}{more}"
        return error_json(422, message, param=where, code="invalid_request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_r: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_json(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error on %s %s:\n%s", request.method, request.url.path,
                  "".join(traceback.format_exception(exc)))
        return error_json(500, "internal error; the server log has the details", code="internal_error")

    # -- routes ------------------------------------------------------------------------------------
    page = (files("embedsmith") / "server" / "static" / "index.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/health", response_model=s.Health, tags=["service"])
    async def health() -> dict[str, Any]:
        """Liveness: always open, even with an API key."""
        return {"status": "ok", "models": list(service.encoders), "reranker": service.reranker_name}

    @app.get("/metrics", response_class=PlainTextResponse, tags=["service"],
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}})
    async def metrics() -> PlainTextResponse:
        """Prometheus text format: requests, latency histogram, batch sizes, queue depth."""
        return PlainTextResponse(service.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    def model_cards() -> list[dict[str, Any]]:
        cards = [{"id": name, "object": "model", "created": _STARTED, "owned_by": "embedsmith", "type": "embedding",
                  "dim": enc.dim, "max_tokens": enc.max_tokens, "fingerprint": enc.fingerprint}
                 for name, enc in service.encoders.items()]
        if service.reranker is not None:
            cards.append({"id": service.reranker_name, "object": "model", "created": _STARTED,
                          "owned_by": "embedsmith", "type": "rerank", "dim": None,
                          "max_tokens": service.reranker.max_length, "fingerprint": None})
        return cards

    @app.get("/v1/models", response_model=s.ModelList, tags=["models"])
    async def list_models() -> dict[str, Any]:
        """The served models, in OpenAI's shape (with dim, max_tokens and fingerprint added)."""
        return {"object": "list", "data": model_cards()}

    @app.get("/v1/models/{model_id}", response_model=s.ModelCard, tags=["models"])
    async def get_model(model_id: str) -> dict[str, Any]:
        for card in model_cards():
            if card["id"] == model_id:
                return card
        raise APIError(404, f"model {model_id!r} is not served here", param="model", code="model_not_found")

    @app.post("/v1/embeddings", response_model=s.EmbeddingResponse, tags=["embeddings"])
    async def embeddings(body: s.EmbeddingRequest) -> Response:
        """OpenAI's embeddings API: unit-length vectors, float lists or base64 float32."""
        name = service.model_name(body.model)
        enc = service.encoders[name]
        texts = [body.input] if isinstance(body.input, str) else body.input
        if not texts:
            raise APIError(400, "input is empty: send a text or a non-empty list of texts", param="input",
                           code="empty_input")
        service.check_texts(texts, "input")
        if body.dimensions is not None and body.dimensions > enc.dim:
            raise APIError(400, f"dimensions={body.dimensions} is larger than {name}'s dimension {enc.dim}",
                           param="dimensions", code="invalid_dimensions")
        kind = Kind(body.input_type) if body.input_type else None
        vectors, tokens = await service.batchers[name].embed(texts, kind=kind, dims=body.dimensions)
        if body.encoding_format == "base64":
            rows = [json.dumps(base64.b64encode(v.astype("<f4").tobytes()).decode("ascii")) for v in vectors]
        else:
            rows = [json.dumps(v.tolist()) for v in vectors]
        data = ",".join(f'{{"object":"embedding","index":{i},"embedding":{row}}}' for i, row in enumerate(rows))
        usage = f'{{"prompt_tokens":{tokens},"total_tokens":{tokens}}}'
        return Response(f'{{"object":"list","data":[{data}],"model":{json.dumps(name)},"usage":{usage}}}',
                        media_type="application/json")

    @app.post("/tokenize", response_model=s.TokenizeResponse, tags=["embeddings"])
    async def tokenize(body: s.TokenizeRequest) -> dict[str, Any]:
        """Token ids per input, from the served model's own tokenizer (as TEI and infinity answer)."""
        name = service.model_name(body.model)
        enc = service.encoders[name]
        texts = [body.input] if isinstance(body.input, str) else body.input
        if not texts:
            raise APIError(400, "input is empty: send a text or a non-empty list of texts", param="input",
                           code="empty_input")
        service.check_texts(texts, "input")
        tokenizer = getattr(enc, "fast_tokenizer", None)
        if tokenizer is None:
            raise APIError(400, f"model {name!r} has no tokenizer to show (its backend counts words)", param="model",
                           code="no_tokenizer")
        encoded = await run_in_threadpool(tokenizer.encode_batch, texts, add_special_tokens=body.add_special_tokens)
        ids = [list(e.ids) for e in encoded]
        return {"object": "list", "model": name, "tokens": ids, "counts": [len(x) for x in ids]}

    @app.post("/v1/rerank", response_model=s.RerankResponse, response_model_exclude_none=True, tags=["rerank"])
    async def rerank(body: s.RerankRequest) -> dict[str, Any]:
        """Cohere/Jina-style rerank with the server's cross-encoder; results best first."""
        if service.reranker is None:
            raise APIError(404, "no reranker is loaded: start the server with --reranker PATH", param="model",
                           code="model_not_found")
        if body.model and body.model != service.reranker_name:
            raise APIError(404, f"reranker {body.model!r} is not served here; served: {service.reranker_name}",
                           param="model", code="model_not_found")
        docs = [d if isinstance(d, str) else d.text for d in body.documents]
        if not body.query.strip():
            raise APIError(400, "query is empty", param="query", code="empty_input")
        if len(body.query) > service.settings.max_input_chars:
            raise APIError(422, f"query has {len(body.query)} characters; the limit is "
                           f"{service.settings.max_input_chars}", param="query", code="input_too_long")
        if not docs:
            raise APIError(400, "documents is empty", param="documents", code="empty_input")
        service.check_texts(docs, "documents")
        order = await run_in_threadpool(service.reranker.rerank, body.query, docs, top_n=body.top_n)
        results = []
        for index, prob, logit in order:
            r: dict[str, Any] = {"index": index, "relevance_score": prob, "relevance_logit": logit}
            if body.return_documents:
                r["document"] = {"text": docs[index]}
            results.append(r)
        return {"id": uuid.uuid4().hex, "model": service.reranker_name, "results": results}

    # -- collections ---------------------------------------------------------------------------------
    def info(coll: Any) -> dict[str, Any]:
        i = coll.info()
        return {"object": "collection", **{k: i[k] for k in ("name", "count", "model", "fingerprint", "dim", "dims",
                                                                "precision", "metric", "disk_bytes")}}

    @app.get("/v1/collections", response_model=s.CollectionList, tags=["collections"])
    async def list_collections() -> dict[str, Any]:
        from ..store import list_collections as names

        def run() -> dict[str, Any]:
            data, unreadable = [], []
            for n in names(settings.store):
                try:
                    data.append(info(service.collection(n)))
                except StoreError as exc:  # one damaged collection must not fail the listing of the others
                    unreadable.append({"object": "collection.unreadable", "name": n, "error": str(exc)})
            return {"object": "list", "data": data, "unreadable": unreadable}

        return await run_in_threadpool(run)

    @app.post("/v1/collections", response_model=s.CollectionInfo, status_code=201, tags=["collections"],
              responses={409: {"model": s.ErrorResponse}})
    async def create_collection(body: s.CollectionCreate) -> dict[str, Any]:
        """Create a collection embedded by a served model."""
        return await run_in_threadpool(lambda: info(service.create_collection(body)))

    @app.get("/v1/collections/{name}", response_model=s.CollectionInfo, tags=["collections"])
    async def describe_collection(name: str) -> dict[str, Any]:
        return await run_in_threadpool(lambda: info(service.collection(name)))

    @app.delete("/v1/collections/{name}", response_model=s.Deleted, tags=["collections"])
    async def delete_collection(name: str) -> dict[str, Any]:
        await run_in_threadpool(service.delete_collection, name)
        return {"id": name, "object": "collection", "deleted": True}

    def write(name: str, body: s.DocumentsRequest, *, upsert: bool) -> dict[str, Any]:
        if not body.documents:
            raise APIError(400, "documents is empty", param="documents", code="empty_input")
        service.check_texts([d.text for d in body.documents], "documents")
        records = [{"id": d.id, "text": d.text, "metadata": d.metadata or {}} for d in body.documents]
        if upsert and any(r["id"] is None for r in records):
            missing = next(i for i, r in enumerate(records) if r["id"] is None)
            raise APIError(400, f"documents[{missing}] has no id; upsert needs ids", param="documents")
        coll = service.collection(name)
        ids = coll.upsert(records) if upsert else coll.add(records)
        return {"object": "list", "ids": ids, "count": coll.count()}

    @app.post("/v1/collections/{name}/documents", response_model=s.DocumentsWritten, tags=["collections"])
    async def add_documents(name: str, body: s.DocumentsRequest) -> dict[str, Any]:
        """Embed and add documents; an id already present is an error (use PUT to replace)."""
        return await run_in_threadpool(write, name, body, upsert=False)

    @app.put("/v1/collections/{name}/documents", response_model=s.DocumentsWritten, tags=["collections"])
    async def upsert_documents(name: str, body: s.DocumentsRequest) -> dict[str, Any]:
        """Embed and add documents, replacing those with the same id."""
        return await run_in_threadpool(write, name, body, upsert=True)

    @app.get("/v1/collections/{name}/documents", response_model=s.DocumentList, tags=["collections"])
    async def get_documents(name: str, ids: list[str] = Query(..., description="ids to fetch")  # noqa: B008
                            ) -> dict[str, Any]:
        """Documents by id, in the order asked (absent ids are left out)."""
        if len(ids) > settings.max_inputs:
            raise APIError(413, f"ids has {len(ids)} items; the limit is {settings.max_inputs}", param="ids")
        records = await run_in_threadpool(lambda: service.collection(name).get(ids))
        return {"object": "list", "data": records}

    @app.post("/v1/collections/{name}/documents/delete", response_model=s.DocumentsDeleted, tags=["collections"])
    async def delete_documents(name: str, body: s.DocumentsDelete) -> dict[str, Any]:
        """Delete documents by ids or by a metadata filter (exactly one of them)."""

        def run() -> dict[str, Any]:
            coll = service.collection(name)
            n = coll.delete(ids=body.ids, where=body.where)
            return {"object": "deleted", "deleted": n, "count": coll.count()}

        return await run_in_threadpool(_guard_filter(run))

    @app.post("/v1/collections/{name}/search", response_model=s.SearchResponse, tags=["collections"])
    async def search(name: str, body: s.SearchRequest) -> dict[str, Any]:
        """Dense, bm25 or hybrid search with filters, optionally reranked by the server's cross-encoder."""
        if body.rerank and service.reranker is None:
            raise APIError(400, "rerank=true needs a reranker: start the server with --reranker PATH",
                           param="rerank", code="no_reranker")
        if len(body.query) > settings.max_input_chars:
            raise APIError(422, f"query has {len(body.query)} characters; the limit is {settings.max_input_chars}",
                           param="query", code="input_too_long")

        def run() -> dict[str, Any]:
            coll = service.collection(name)
            hits = coll.search(body.query, k=body.k, mode=body.mode, where=body.where, fusion=body.fusion,
                               alpha=body.alpha, candidates=body.candidates, group_by=body.group_by,
                               rerank=service.reranker if body.rerank else None)
            return {"object": "list", "collection": name, "query": body.query, "mode": body.mode,
                    "data": _hits_json(hits)}

        return await run_in_threadpool(_guard_filter(run))

    return app


def _guard_filter(fn: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
    """Filters SQLite cannot evaluate (numbers beyond 64 bits, too deep or too many terms) are the client's."""
    import sqlite3

    def run() -> dict[str, Any]:
        try:
            return fn()
        except OverflowError as exc:
            raise InvalidInputError(f"where: a number is out of range ({exc})") from None
        except RecursionError:
            raise InvalidInputError("where: the filter is nested too deeply") from None
        except sqlite3.OperationalError as exc:
            if "too many" in str(exc) or "too deep" in str(exc) or "too complex" in str(exc):
                raise InvalidInputError(f"where: the filter is too large for SQLite ({exc})") from None
            raise

    return run


def _version() -> str:
    from .. import __version__

    return __version__


def app_from_environment() -> FastAPI:
    """Factory for ``uvicorn --factory`` with several workers: settings travel in $EMBEDSMITH_SERVE_SETTINGS."""
    raw = os.environ.get("EMBEDSMITH_SERVE_SETTINGS")
    if not raw:
        raise InvalidInputError("EMBEDSMITH_SERVE_SETTINGS is not set; start the server with `embedsmith serve`")
    return create_app(ServerSettings.from_json(raw))


__all__ = ["APIError", "ServerSettings", "app_from_environment", "create_app"]
