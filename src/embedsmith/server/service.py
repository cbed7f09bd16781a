"""The state behind the routes: served models and their batchers, the reranker (and MaxSim scorers over the served
encoders), limits, open collections."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidInputError
from ..store.validate import check_string
from ..types import Encoder, Kind
from . import schemas as s
from .batching import EmbeddingBatcher
from .errors import APIError
from .metrics import ServiceMetrics, histogram_lines, sample_lines
from .settings import ServerSettings


class Service:
    """Encoders and their batchers, the reranker, per-request limits and the cache of open collections."""

    def __init__(self, settings: ServerSettings, encoders: dict[str, Encoder], reranker: Any | None) -> None:
        if not encoders:
            raise InvalidInputError("serve needs at least one encoder")
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
        self._late: dict[str, Any] = {}
        self._late_lock = threading.Lock()

    # -- models -----------------------------------------------------------------------------------
    def model_name(self, requested: str | None) -> str:
        """The served name for ``requested`` (a served name or a model's own name; None: the default)."""
        if requested is None or requested == "":
            return self.default_model
        if requested in self.encoders:
            return requested
        for name, enc in self.encoders.items():
            if requested == enc.name:
                return name
        raise APIError(404, f"model {requested!r} is not served here; served: {', '.join(self.encoders)}",
                       param="model", code="model_not_found")

    def late_interaction(self, requested: str) -> tuple[Any, str]:
        """The MaxSim scorer for ``maxsim`` (the default served encoder) or ``maxsim:NAME`` (a served encoder,
        by served or model name), and the name it answers under. Only served encoders: a request never loads
        a model, so any other name is a 404 ``model_not_found``."""
        from ..rerankers import LateInteraction

        wanted = requested.split(":", 1)[1] if ":" in requested else ""
        if ":" in requested and not wanted.strip():
            raise APIError(404, f"model {requested!r} names no encoder; use maxsim or maxsim:ENCODER with a served "
                           f"encoder ({', '.join(self.encoders)})", param="model", code="model_not_found")
        try:
            name = self.model_name(wanted or None)
        except APIError as exc:
            raise APIError(404, f"{requested!r}: {exc.message}", param="model", code="model_not_found") from None
        with self._late_lock:  # one scorer per encoder, made once
            scorer = self._late.get(name)
            if scorer is None:
                scorer = self._late[name] = LateInteraction(self.encoders[name], source="on-the-fly")
        return scorer, f"maxsim:{name}"

    def check_texts(self, texts: list[str], param: str) -> None:
        """Count, length, encodable UTF-8 and non-blank, each failure naming ``param[i]``."""
        if not texts:
            raise APIError(400, f"{param} is empty: send a text or a non-empty list of texts", param=param,
                           code="empty_input")
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

    def check_query(self, query: str, param: str = "query") -> None:
        """A query: encodable, not blank, within the character limit."""
        try:
            check_string(query, param)
        except InvalidInputError as exc:
            raise APIError(400, str(exc), param=param, code="invalid_text") from None
        if not query.strip():
            raise APIError(400, f"{param} is empty", param=param, code="empty_input")
        if len(query) > self.settings.max_input_chars:
            raise APIError(422, f"{param} has {len(query)} characters; the limit is {self.settings.max_input_chars}",
                           param=param, code="input_too_long")

    async def embed(self, name: str, texts: list[str], *, kind: Kind | None, dims: int | None, truncate: bool,
                    side: str) -> tuple[np.ndarray, int, list[int]]:
        """Unit vectors for checked ``texts``, the tokens the model read, and the tokens each text lost to the
        model's limit.

        With ``truncate=False`` a text longer than the model reads is a 413 naming it, before any encoding.
        """
        enc = self.encoders[name]
        if dims is not None and dims > enc.dim:
            raise APIError(400, f"dimensions={dims} is larger than {name}'s dimension {enc.dim}",
                           param="dimensions", code="invalid_dimensions")
        cuts = not getattr(enc, "windows_long_texts", False)  # a windowing model reads everything
        if not truncate and cuts:
            from starlette.concurrency import run_in_threadpool

            counts = await run_in_threadpool(enc.count_tokens, texts, kind=kind)
            over = next((i for i, n in enumerate(counts) if n > enc.max_tokens), None)
            if over is not None:
                raise APIError(413, f"input[{over}] has {counts[over]} tokens; {name} reads {enc.max_tokens} "
                               "(send truncate=true to cut it)", param="input", code="input_too_long")
        vectors, lengths = await self.batchers[name].embed(texts, kind=kind, dims=dims, truncation_side=side)
        cut = [max(0, n - enc.max_tokens) if cuts else 0 for n in lengths]
        return vectors, sum(lengths) - sum(cut), cut

    # -- collections --------------------------------------------------------------------------------
    def _served_encoder_for(self, fingerprint: str | None) -> Encoder | None:
        from ..store.settings import fingerprints_compatible

        if not fingerprint:
            return None
        return next((e for e in self.encoders.values() if fingerprints_compatible(fingerprint, e.fingerprint)), None)

    def collection(self, name: str) -> Any:
        """An open collection (cached), using a served encoder when it is the collection's model.

        A cached handle whose collection was deleted or replaced by another process is closed and the
        name opened again (or the store's typed error raised), so no write goes to a vanished collection.
        """
        from ..store import open_collection

        with self._collections_lock:
            coll = self._collections.get(name)
            if coll is not None:
                if coll.is_current():
                    return coll
                self._collections.pop(name).close()
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


def load_models(settings: ServerSettings) -> tuple[dict[str, Encoder], Any | None]:
    """Load the encoders and reranker that ``settings`` names (from local folders only)."""
    from ..encoders import load_encoder

    encoders: dict[str, Encoder] = {}
    for name in settings.models:
        encoders[name] = load_encoder(name, backend=settings.backend, threads=settings.threads)
    return encoders, load_reranker(settings)


def load_reranker(settings: ServerSettings) -> Any | None:
    if not settings.reranker:
        return None
    from ..rerankers import Reranker

    return Reranker(settings.reranker, threads=settings.threads)
