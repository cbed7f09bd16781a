"""``embedsmith serve``: the options of the HTTP service; everything else lives in :mod:`embedsmith.server`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from .options import BackendOpt, StoreOpt


def serve(
    host: Annotated[str, typer.Option(help="interface to bind (0.0.0.0 exposes the server to the network)")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    model: Annotated[list[str] | None, typer.Option("--model", "-m", help="model to serve (repeatable; the first "
                                                    "is the default): alias or folder")] = None,
    backend: BackendOpt = "auto",
    reranker: Annotated[Path | None, typer.Option(help="cross-encoder folder for /v1/rerank and reranked search")]
    = None,
    store: StoreOpt = None,
    api_key: Annotated[str | None, typer.Option(envvar="EMBEDSMITH_API_KEY", show_default=False,
                                                help="require 'Authorization: Bearer KEY' (prefer the env var)")]
    = None,
    allowed_host: Annotated[list[str] | None, typer.Option(
        "--allowed-host", help="without an API key, also answer requests with this Host (repeatable)")] = None,
    workers: Annotated[int, typer.Option(help="server processes (each loads the models)")] = 1,
    threads: Annotated[int | None, typer.Option(help="encoder CPU threads per process (default: cores/workers)")]
    = None,
    max_inputs: Annotated[int, typer.Option(help="texts per request")] = 2048,
    max_input_chars: Annotated[int, typer.Option(help="characters per text")] = 32_768,
    max_body_bytes: Annotated[int, typer.Option(help="request body size")] = 16 * 1024 * 1024,
    max_batch: Annotated[int, typer.Option(help="texts per coalesced encoder call")] = 128,
    batch_wait_ms: Annotated[float, typer.Option(help="how long a request waits to share a batch")] = 2.0,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "info",
) -> None:
    """Serve OpenAI-compatible /v1/embeddings, /v1/rerank, collections and a search page (FastAPI + uvicorn)."""
    import os

    from ..errors import InvalidInputError, require

    if os.environ.get("EMBEDSMITH_API_KEY") == "" or (api_key is not None and not api_key.strip()):
        # An empty key would otherwise read as "no key": refuse rather than serve without the auth asked for.
        raise InvalidInputError("the API key is empty (EMBEDSMITH_API_KEY='' or --api-key ''); set a key, or unset "
                                "the variable to serve without one")
    require("uvicorn", extra="serve", what="embedsmith serve")
    import uvicorn

    from ..encoders import DEFAULT_MODEL
    from ..server.app import ServerSettings, create_app

    if workers < 1:
        raise InvalidInputError(f"--workers must be at least 1, got {workers}")
    if not 0 < port < 65536:
        raise InvalidInputError(f"--port must be 1-65535, got {port}")
    if threads is None and workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
    settings = ServerSettings(
        models=model or [DEFAULT_MODEL], backend=backend, reranker=str(reranker) if reranker else None, store=store,
        api_key=api_key, host=host, allowed_hosts=list(allowed_host or []), max_inputs=max_inputs,
        max_input_chars=max_input_chars, max_body_bytes=max_body_bytes,
        max_batch=max_batch, batch_wait_ms=batch_wait_ms, threads=threads,
    )
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        print(f"embedsmith: warning: serving on {host} without an API key: only requests addressed to localhost or "
              "an --allowed-host name are answered; set EMBEDSMITH_API_KEY to serve the network",
              file=sys.stderr)
    shown = f"http://{host}:{port}" if ":" not in host else f"http://[{host}]:{port}"
    print(f"embedsmith: serving {', '.join(settings.models)} on {shown} (search page at /, API under /v1)",
          file=sys.stderr)
    if workers == 1:
        uvicorn.run(create_app(settings), host=host, port=port, log_level=log_level)
        return
    # Worker processes build their own app: the settings travel in the environment (never on a command line).
    os.environ["EMBEDSMITH_SERVE_SETTINGS"] = settings.to_json()
    uvicorn.run("embedsmith.server.app:app_from_environment", factory=True, host=host, port=port, workers=workers,
                log_level=log_level)
