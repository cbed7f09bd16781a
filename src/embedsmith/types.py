"""Shared value types and protocols. Stages exchange these, never each other's internals."""

from __future__ import annotations

import enum
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np

from .errors import InvalidInputError

_E = TypeVar("_E", bound=enum.Enum)


def parse_enum(cls: type[_E], value: str | _E, what: str) -> _E:
    """Convert ``value`` to ``cls`` once, listing the allowed values when it is not one of them."""
    if isinstance(value, cls):
        return value
    try:
        return cls(str(value).lower())
    except ValueError:
        allowed = ", ".join(m.value for m in cls)
        raise InvalidInputError(f"unknown {what} {value!r}; expected one of: {allowed}") from None


class Metric(enum.StrEnum):
    """Similarity/distance functions. Scores are always 'higher is closer'."""

    COSINE = "cosine"
    DOT = "dot"
    L2 = "l2"
    MANHATTAN = "manhattan"


class Precision(enum.StrEnum):
    """Output precision of vectors. ``binary`` packs 8 dimensions per uint8 byte."""

    FLOAT32 = "float32"
    FLOAT16 = "float16"
    INT8 = "int8"
    BINARY = "binary"


class Kind(enum.StrEnum):
    """What a text is, which selects the model's prompt."""

    QUERY = "query"
    DOCUMENT = "document"


@runtime_checkable
class Encoder(Protocol):
    """What every encoder offers; chunking, collections and evaluation rely on nothing else."""

    name: str
    dim: int
    max_tokens: int
    fingerprint: str

    def count_tokens(self, texts: Sequence[str], *, kind: str | Kind | None = None) -> list[int]:
        """Token counts including special tokens and the prompt (for ``kind=None``)."""
        ...

    def encode(
        self,
        texts: Sequence[str],
        *,
        kind: str | Kind | None = None,
        batch_size: int | None = None,
        normalize: bool = True,
        dims: int | None = None,
        precision: str | Precision = Precision.FLOAT32,
        show_progress: bool = False,
    ) -> np.ndarray:
        """Encode texts to an array of shape ``[n, dim]``."""
        ...


@dataclass(frozen=True)
class Hit:
    """One search result. ``score`` is higher-is-better (distances are negated)."""

    id: str
    score: float
    text: str | None
    metadata: dict[str, Any]
    first_stage_score: float | None = None
    rerank_logit: float | None = None
    relevance: float | None = None


@dataclass(frozen=True)
class Hits:
    """Search results, best first; ties are broken by id.

    ``scores`` are always higher-is-better: cosine similarity, dot product, the *negated* L2 or Manhattan
    distance, BM25, or the fused score in hybrid mode. After reranking, ``scores`` are the reranker's
    probabilities (sigmoid of its logit, 0..1), ``rerank_logits`` its raw logits, and
    ``first_stage_scores`` the scores the candidates had before reranking.
    """

    ids: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    texts: list[str | None] = field(default_factory=list)
    metadata: list[dict[str, Any]] = field(default_factory=list)
    first_stage_scores: list[float] | None = None
    rerank_logits: list[float] | None = None
    #: calibrated P(relevant) per hit, when the collection holds a calibration for the search's mode
    relevance: list[float] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self) -> Iterator[Hit]:
        for i in range(len(self.ids)):
            yield self[i]

    def __getitem__(self, i: int) -> Hit:
        return Hit(
            self.ids[i], self.scores[i], self.texts[i], self.metadata[i],
            self.first_stage_scores[i] if self.first_stage_scores is not None else None,
            self.rerank_logits[i] if self.rerank_logits is not None else None,
            self.relevance[i] if self.relevance is not None else None,
        )

    def to_dicts(self) -> list[dict[str, Any]]:
        out = []
        for h in self:
            d: dict[str, Any] = {"id": h.id, "score": h.score, "text": h.text, "metadata": h.metadata}
            if h.rerank_logit is not None:
                d["rerank_logit"] = h.rerank_logit
                d["first_stage_score"] = h.first_stage_score
            if h.relevance is not None:
                d["relevance"] = h.relevance
            out.append(d)
        return out


@dataclass(frozen=True)
class Chunk:
    """A piece of a source text.

    Attributes:
        text: the chunk, exactly ``source_text[start:end]``.
        start: character offset of the chunk in the source text.
        end: character offset just past the chunk.
        index: chunk number within its source, from 0.
        n_tokens: tokens in the chunk by the encoder's tokenizer (no special or prompt tokens), or
            characters when chunking by characters.
        source: where the text came from (a path), when known.
        title: the document title or the markdown heading the chunk sits under, when known.
    """

    text: str
    start: int
    end: int
    index: int
    n_tokens: int
    source: str | None = None
    title: str | None = None
