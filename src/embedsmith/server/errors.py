"""Errors answered in OpenAI's shape, and the one table from the library's typed errors to HTTP statuses."""

from __future__ import annotations

import logging
import traceback
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import (
    CollectionBusyError,
    CollectionExistsError,
    CollectionNotFoundError,
    EmbedsmithError,
    MissingExtraError,
    ModelNotFoundError,
    SettingsMismatchError,
    StoreError,
    StoreReadOnlyError,
)
from .batching import QueueFullError

log = logging.getLogger("embedsmith.server")


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
                404: "not_found_error", 405: "invalid_request_error", 409: "conflict_error",
                413: "request_too_large", 422: "invalid_request_error", 429: "rate_limit_error",
                500: "server_error", 501: "server_error", 503: "service_unavailable"}


def error_json(status: int, message: str, *, type: str | None = None, param: str | None = None,
               code: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": type or _ERROR_TYPES.get(status, "invalid_request_error"),
                      "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


# The library's typed errors -> (HTTP status, OpenAI-style code), most specific first; anything else the
# library raises (InvalidInputError and its kin: a bad value) is 400. The README has this table.
STATUSES: tuple[tuple[type[EmbedsmithError], int, str | None], ...] = (
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


def library_status(exc: EmbedsmithError) -> tuple[int, str | None]:
    """HTTP status and error code for an error raised by the library (400 for bad values and the rest)."""
    return next(((status, code) for kind, status, code in STATUSES if isinstance(exc, kind)), (400, None))


# Union members show up in pydantic's locations ('str', 'list[str]', 'RerankDocument'): they are not fields.
_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "dict", "list", "none"})


def install_handlers(app: FastAPI) -> None:
    """Every failure leaves the server as a JSON error in OpenAI's shape; only a bug is a 500 (and logged)."""

    @app.exception_handler(APIError)
    async def _api_error(_r: Request, exc: APIError) -> JSONResponse:
        return error_json(exc.status, exc.message, type=exc.type, param=exc.param, code=exc.code, headers=exc.headers)

    @app.exception_handler(EmbedsmithError)
    async def _library(_r: Request, exc: EmbedsmithError) -> JSONResponse:
        status, code = library_status(exc)
        headers = {"Retry-After": "1"} if status == 429 else None
        return error_json(status, str(exc), code=code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first: dict[str, Any] = dict(errors[0]) if errors else {"loc": (), "msg": "invalid request"}
        loc = [str(x) for x in first.get("loc", ())[1:]
               if not (isinstance(x, str) and (x in _TYPE_TAGS or "[" in x or x[:1].isupper()))]
        where = ".".join(loc) or "body"
        if loc[:1] == ["input"] and request.scope.get("path") == "/v1/embeddings":
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
