"""Synthetic queries from any OpenAI-compatible chat endpoint: one question per passage."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from ..errors import EmbedsmithError, InvalidInputError, require
from .data import TrainingData

PROMPT = ("Write one short search query that a user would type to find the following passage. "
          "Answer with the query only.\n\nPassage:\n{passage}")


def parse_spec(spec: str) -> tuple[str, str]:
    """``openai-chat:MODEL@BASE_URL`` -> (model, base_url)."""
    if not spec.startswith("openai-chat:") or "@" not in spec:
        raise InvalidInputError(f"synthetic queries take 'openai-chat:MODEL@BASE_URL', got {spec!r}")
    model, _, url = spec.removeprefix("openai-chat:").partition("@")
    if not model or not url.startswith(("http://", "https://")):
        raise InvalidInputError(f"synthetic queries take 'openai-chat:MODEL@BASE_URL', got {spec!r}")
    return model, url.rstrip("/")


def synthetic_queries(passages: Sequence[str], spec: str, *, api_key: str | None = None, retries: int = 3,
                      timeout: float = 60.0) -> TrainingData:
    """Ask the chat model for a query per passage; returns (query, passage) pairs.

    Raises:
        EmbedsmithError: the endpoint kept failing after ``retries`` attempts (status and body named).
    """
    httpx: Any = require("httpx", extra="train", what="synthetic queries")
    model, base = parse_spec(spec)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    data = TrainingData(source=f"synthetic queries ({model})")
    with httpx.Client(timeout=timeout, headers=headers) as client:
        for passage in passages:
            body = {"model": model, "temperature": 0.7, "max_tokens": 64,
                    "messages": [{"role": "user", "content": PROMPT.format(passage=passage[:4000])}]}
            for attempt in range(retries):
                try:
                    r = client.post(f"{base}/chat/completions", json=body)
                except httpx.HTTPError as exc:
                    error = str(exc)
                else:
                    if r.status_code == 200:
                        query = r.json()["choices"][0]["message"]["content"].strip().strip('"')
                        if query:
                            data.add(query, passage)
                        break
                    error = f"HTTP {r.status_code}: {r.text[:200]}"
                    if r.status_code < 500 and r.status_code != 429:
                        raise EmbedsmithError(f"{base}/chat/completions refused the request: {error}")
                time.sleep(min(2**attempt * 0.5, 8))
            else:
                raise EmbedsmithError(f"{base}/chat/completions failed {retries} times: {error}")
    return data
