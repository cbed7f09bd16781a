"""What every request passes before a route: the Host check, the API key and the body limit (one ASGI layer),
and the dependency that hands routes the :class:`~embedsmith.server.service.Service`."""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.responses import Response

from .errors import BodyTooLargeError, error_json
from .metrics import ServiceMetrics
from .service import Service
from .settings import ServerSettings

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
# Paths served without the API key: the liveness probe, and the search page's static HTML (it holds no data;
# it asks for the key and sends it with every API call).
PUBLIC_PATHS = frozenset({"/health", "/"})


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
    """Host check (without a key), API key, body size limit and request metrics, in one pure ASGI layer.

    Pure ASGI rather than ``BaseHTTPMiddleware``: it costs a few microseconds per request, and the hot
    endpoint is a few hundred microseconds of work in all.
    """

    def __init__(self, app: ASGIApp, *, api_key: str | None, max_body_bytes: int, metrics: ServiceMetrics,
                 hosts: frozenset[str] = frozenset()) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode() if api_key else None
        self.hosts = hosts  # checked only without a key
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
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
            refusal = self._refusal(scope)
            if refusal is not None:
                await refusal(scope, receive, send_wrapper)
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

    def _refusal(self, scope: Scope) -> Response | None:
        """The answer to a request refused before any route runs, or None to let it through."""
        headers = dict(scope["headers"])  # later duplicates win; none of these may be repeated anyway
        if self.expected is None:
            raw = headers.get(b"host")
            if raw is None or host_name(raw.decode("latin-1")) not in self.hosts:
                return error_json(
                    403, "this server has no API key and answers only requests addressed to its own host "
                    "(Host 127.0.0.1, localhost, [::1] or the bound host); add --allowed-host NAME or set "
                    "EMBEDSMITH_API_KEY to serve others", code="forbidden_host")
        elif scope["path"] not in PUBLIC_PATHS and not hmac.compare_digest(headers.get(b"authorization", b""),
                                                                           self.expected):
            return error_json(401, "missing or wrong API key: send 'Authorization: Bearer KEY'",
                              code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            return error_json(413, f"request body is {int(length)} bytes; the limit is {self.max_body_bytes}",
                              code="body_too_large")
        return None


async def get_service(request: Request) -> Service:
    """The app's Service (async: FastAPI would run a plain function in a worker thread, per request)."""
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(get_service)]
