"""What ``embedsmith serve`` can set: models, store, key, host and per-request limits."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from ..errors import InvalidInputError


@dataclass
class ServerSettings:
    """Everything ``embedsmith serve`` can set. Limits apply per request.

    Attributes:
        models: encoder aliases or folders to serve; the first is the default.
        backend: encoder backend ('auto', 'onnx', 'onnx-int8', 'torch').
        reranker: a cross-encoder folder for /v1/rerank and reranked search, or None.
        store: the collections folder or a ``postgresql://`` DSN (default: embedsmith's default store).
        api_key: when set, every endpoint but /health and the page's HTML needs ``Authorization: Bearer KEY``.
            An empty key is refused (it would silently mean "no auth").
        host: the interface the server binds. Without a key, only requests whose ``Host`` is this host,
            ``127.0.0.1``, ``localhost`` or ``[::1]`` (or one of ``allowed_hosts``) are served, so a web page
            the user visits cannot drive the local API through DNS rebinding; others get 403.
        allowed_hosts: more ``Host`` names to accept without a key (e.g. the machine's name on a LAN).
        max_inputs: texts per embeddings request (and documents per rerank or write): the hard limit.
        max_input_chars: characters per text.
        max_body_bytes: request body size.
        max_batch: texts per coalesced encoder call (a larger request is split, never refused).
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
