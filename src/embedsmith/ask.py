"""Ask: an answer from the packed context, with numbered citations, through any OpenAI-compatible chat endpoint.

The context is :func:`embedsmith.context.pack_context`'s markdown (passages numbered [1], [2], ... with their
sources); the model is told to answer only from it and to cite the numbers. Nothing here is required for
retrieval: without ``--llm`` there is no answer, only a clear error. The endpoint is any server that speaks
OpenAI's ``/chat/completions`` (vLLM, llama.cpp's server, Ollama, OpenAI).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .context import Context
from .errors import EmbedsmithError, InvalidInputError

if TYPE_CHECKING:
    from .store.base import Collection

PREFIX = "openai-chat:"
SYSTEM = ("Answer the question from the numbered context passages only. Cite the passages you use with their "
          "numbers in square brackets, like [1] or [2][3]. If the context does not hold the answer, say so.")


class LLMError(EmbedsmithError):
    """The chat endpoint could not be reached or gave no usable answer."""


@dataclass(frozen=True)
class Answer:
    """The model's answer and the context it was given (its passages are the citations' numbers, from 1)."""

    text: str
    context: Context
    model: str

    def sources(self) -> list[str]:
        return [p.citation(i) for i, p in enumerate(self.context.passages, start=1)]


def parse_llm(spec: str | None) -> tuple[str, str]:
    """``openai-chat:MODEL@BASE_URL`` -> (MODEL, BASE_URL)."""
    if not spec:
        raise InvalidInputError("ask needs a chat endpoint: --llm openai-chat:MODEL@URL (any OpenAI-compatible "
                                "server, e.g. openai-chat:llama3@http://localhost:11434/v1)")
    if not spec.startswith(PREFIX):
        raise InvalidInputError(f"--llm must look like openai-chat:MODEL@URL, got {spec!r}")
    model, sep, base = spec[len(PREFIX):].partition("@")
    if not model or not sep or not base.startswith(("http://", "https://")):
        raise InvalidInputError(f"--llm must look like openai-chat:MODEL@http(s)://HOST/v1, got {spec!r}")
    return model, base.rstrip("/")


def ask(collection: Collection, question: str, *, llm: str | None, budget_tokens: int = 2000, k: int | None = None,
        mode: str = "dense", where: dict[str, Any] | None = None, rerank: Any = None, api_key: str | None = None,
        timeout: float = 120.0, transport: Any = None) -> Answer:
    """Answer ``question`` from ``collection`` through the chat endpoint ``llm`` (``openai-chat:MODEL@URL``).

    Raises:
        InvalidInputError: no or a malformed endpoint (checked before any search).
        LLMError: the endpoint failed or answered in another shape.
    """
    model, base = parse_llm(llm)
    import httpx

    ctx = collection.context(question, budget_tokens=budget_tokens, k=k, mode=mode, where=where, rerank=rerank)
    key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY", "")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    body = {"model": model, "temperature": 0, "messages": [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": f"Context:\n\n{ctx.to_markdown()}\n\nQuestion: {question}"}]}
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=timeout, transport=transport) as client:
            res = client.post("/chat/completions", json=body)
    except httpx.HTTPError as exc:
        raise LLMError(f"{base}/chat/completions failed: {type(exc).__name__}: {exc}") from exc
    if res.status_code != 200:
        raise LLMError(f"{base}/chat/completions answered {res.status_code}: {res.text[:300]}")
    try:
        text = res.json()["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise LLMError(f"{base}/chat/completions answered in another shape than OpenAI's: {exc!r}") from None
    if not isinstance(text, str):
        raise LLMError(f"{base}/chat/completions gave no text")
    return Answer(text.strip(), ctx, model)


__all__ = ["Answer", "LLMError", "ask", "parse_llm"]
