"""An encoder that calls any OpenAI-compatible ``/v1/embeddings`` server (embedsmith serve, OpenAI, TEI, infinity).

Load it with ``load_encoder("openai:MODEL@BASE_URL")``, e.g. ``openai:minilm@http://127.0.0.1:8000/v1``.
The key comes from ``api_key=`` or ``$OPENAI_API_KEY``. Texts go in batches, as base64 float32; 429 and 5xx
answers and connection errors are retried with exponential backoff (honouring ``Retry-After``).
"""

from __future__ import annotations

import base64
import os
import re
import time
from typing import Any

import numpy as np

from ..errors import EmbedsmithError, InvalidInputError, ModelNotFoundError, require
from ..types import Kind
from .base import BaseEncoder

_WORDISH = re.compile(r"\w+|[^\w\s]")
_RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})


class RemoteEncoderError(EmbedsmithError):
    """The embeddings server failed, or kept failing after the retries; the message has its answer."""


def parse_openai_name(name: str) -> tuple[str, str]:
    """``openai:MODEL@BASE_URL`` -> (MODEL, BASE_URL). The URL defaults to OpenAI's."""
    if not name.startswith("openai:"):
        raise InvalidInputError(f"remote model names look like openai:MODEL@BASE_URL, got {name!r}")
    rest = name[len("openai:"):]
    model, sep, base = rest.partition("@")
    if not model:
        raise InvalidInputError(f"no model in {name!r}; expected openai:MODEL@BASE_URL")
    base = base if sep else "https://api.openai.com/v1"
    if not base.startswith(("http://", "https://")):
        raise InvalidInputError(f"base URL {base!r} in {name!r} must start with http:// or https://")
    return model, base.rstrip("/")


class OpenAICompatEncoder(BaseEncoder):
    """Embeddings from a remote OpenAI-compatible server.

    Args:
        model: the server's model name.
        base_url: the API root, ending in ``/v1`` (``.../embeddings`` is appended).
        api_key: bearer key (default ``$OPENAI_API_KEY``; none is sent when empty).
        dim: the vector dimension; asked of the server (one short request) when omitted.
        max_tokens: what the remote model reads (default: the server's /v1/models entry, else 8192).
        batch_size: texts per request.
        timeout: seconds per request.
        retries: extra attempts after a retryable failure (429, 5xx, timeouts, connection errors).
        backoff: first wait in seconds; doubled per retry (capped at 30 s), or the server's Retry-After.
        prompts: prefix per kind, added before sending.
        transport: an ``httpx`` transport (tests).
    """

    default_batch_size = 64

    def __init__(
        self,
        model: str,
        base_url: str,
        *,
        api_key: str | None = None,
        dim: int | None = None,
        max_tokens: int | None = None,
        batch_size: int = 64,
        timeout: float = 60.0,
        retries: int = 4,
        backoff: float = 0.5,
        prompts: dict[str, str] | None = None,
        transport: Any = None,
    ) -> None:
        httpx: Any = require("httpx", extra="remote", what="the openai: encoder")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            raise InvalidInputError(f"batch_size must be a positive integer, got {batch_size!r}")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise InvalidInputError(f"retries must be a non-negative integer, got {retries!r}")
        if not timeout or timeout <= 0:
            raise InvalidInputError(f"timeout must be positive, got {timeout!r}")
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.name = f"openai:{model}@{self.base_url}"
        self.backend = "remote"
        self.prompts = dict(prompts or {})
        self.default_batch_size = batch_size
        self.retries = retries
        self.backoff = backoff
        key = os.environ.get("OPENAI_API_KEY", "") if api_key is None else api_key
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._httpx = httpx
        self._client = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout, transport=transport)
        card = self._model_card()
        self.max_tokens = int(max_tokens or card.get("max_tokens") or 8192)
        # The server's fingerprint (embedsmith serve reports one) lets a collection built locally with the same
        # weights be searched through the server; otherwise the name stands for the weights.
        self.fingerprint = str(card.get("fingerprint") or self.name)
        self.dim = int(dim or card.get("dim") or self._request(["dimension probe"])[0].shape[0])

    def _model_card(self) -> dict[str, Any]:
        """The server's /v1/models/{model} entry, or {} when it has none (OpenAI omits dim)."""
        try:
            res = self._client.get(f"/models/{self.model}")
        except self._httpx.HTTPError:
            return {}
        if res.status_code == 200:
            try:
                data = res.json()
            except ValueError:
                return {}
            return data if isinstance(data, dict) else {}
        if res.status_code in (401, 403):
            raise RemoteEncoderError(f"{self.base_url} refused the API key ({res.status_code}): {_message(res)}")
        return {}

    def _request(self, texts: list[str]) -> np.ndarray:
        body = {"model": self.model, "input": texts, "encoding_format": "base64"}
        attempt = 0
        while True:
            try:
                res = self._client.post("/embeddings", json=body)
            except (self._httpx.TimeoutException, self._httpx.TransportError) as exc:
                if attempt >= self.retries:
                    raise RemoteEncoderError(
                        f"{self.base_url}/embeddings failed after {attempt + 1} attempts: {type(exc).__name__}: {exc}"
                    ) from exc
                self._sleep(attempt, None)
                attempt += 1
                continue
            if res.status_code == 200:
                return self._decode(res, len(texts))
            if res.status_code in _RETRY_STATUS and attempt < self.retries:
                self._sleep(attempt, res.headers.get("retry-after"))
                attempt += 1
                continue
            message = _message(res)
            if res.status_code == 404:
                raise ModelNotFoundError(f"{self.base_url}: model {self.model!r}: {message}")
            if res.status_code in (400, 413, 422):
                raise InvalidInputError(f"{self.base_url} rejected the request ({res.status_code}): {message}")
            tries = f" after {attempt + 1} attempts" if attempt else ""
            raise RemoteEncoderError(f"{self.base_url}/embeddings answered {res.status_code}{tries}: {message}")

    def _sleep(self, attempt: int, retry_after: str | None) -> None:
        wait = min(30.0, self.backoff * (2**attempt))
        if retry_after:
            try:
                wait = min(30.0, max(0.0, float(retry_after)))
            except ValueError:
                pass
        time.sleep(wait)

    @staticmethod
    def _decode(res: Any, n: int) -> np.ndarray:
        try:
            items = sorted(res.json()["data"], key=lambda d: d["index"])
            rows = [
                np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") if isinstance(d["embedding"], str)
                else np.asarray(d["embedding"], dtype=np.float32)
                for d in items
            ]
        except (ValueError, KeyError, TypeError) as exc:
            raise RemoteEncoderError(f"the embeddings server's answer is not OpenAI's shape: {exc}") from None
        if len(rows) != n or len({r.shape for r in rows}) != 1:
            raise RemoteEncoderError(f"the embeddings server sent {len(rows)} vectors of mixed sizes for {n} texts")
        return np.stack(rows).astype(np.float32)

    def _token_lengths(self, texts: list[str], kind: Kind | None) -> list[int]:
        # No tokenizer here: words and punctuation approximate the remote model's tokens.
        prompt = self._prompt(kind)
        return [len(_WORDISH.findall(prompt + t)) for t in texts]

    def _embed(self, texts: list[str], kind: Kind | None, batch_size: int, show_progress: bool) -> np.ndarray:
        prompt = self._prompt(kind)
        items = [prompt + t for t in texts] if prompt else texts
        out = np.empty((len(items), self.dim), dtype=np.float32)
        from tqdm.auto import tqdm

        starts = range(0, len(items), batch_size)
        for start in tqdm(starts, disable=not show_progress, desc=f"encoding ({self.name})", unit="batch"):
            part = self._request(items[start : start + batch_size])
            if part.shape[1] != self.dim:
                raise RemoteEncoderError(f"{self.name} sent vectors of dimension {part.shape[1]}, expected {self.dim}")
            out[start : start + len(part)] = part
        return out

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._client.close()


def _message(res: Any) -> str:
    try:
        data = res.json()
        err = data.get("error") if isinstance(data, dict) else None
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(data, dict) and data.get("detail"):
            return str(data["detail"])
    except ValueError:
        pass
    return res.text[:300] or res.reason_phrase
