"""The HTTP service (``embedsmith serve``): OpenAI-compatible embeddings, rerank, collections and a search page.

Needs the 'serve' extra (FastAPI, uvicorn); the error says so when it is missing.
"""

from ..errors import require

require("fastapi", extra="serve", what="embedsmith serve")
require("uvicorn", extra="serve", what="embedsmith serve")
require("orjson", extra="serve", what="embedsmith serve")

from .app import APIError, ServerSettings, app_from_environment, create_app  # noqa: E402

__all__ = ["APIError", "ServerSettings", "app_from_environment", "create_app"]
