"""Late interaction (ColBERT's MaxSim) as a second stage, from the token vectors of the encoder we ship.

A query and a document are each a bag of unit token vectors; their score is the mean, over the query's
tokens, of each one's best cosine with any of the document's tokens. No trained reranker is needed: MiniLM's
own last hidden states reorder its dense top 100 on Cranfield dev from nDCG@10 0.48 to 0.53
(benchmarks/README.md, "Late interaction").

Document token vectors come from one of two places:

- ``stored``: written with the collection at index time (``late_interaction=True`` at creation), in a
  :class:`TokenCodec`'s compact form (int2 by default; float16, int8 or binary; optionally reduced by a PCA
  fitted on the collection's first documents), special tokens included. Reranking 100 candidates then reads
  their blobs in one query and multiplies.
- ``on-the-fly``: the candidates' texts are encoded per search (no storage, one forward pass per search).

sentence-transformers 6 has a ``MultiVectorEncoder`` and PyLate a ColBERT model, but both score with torch over
padded tensors of fixed width; here the candidates' ragged token matrices are concatenated and scored with
one matrix product and a segmented max (``numpy.maximum.reduceat``), which is what makes 100 candidates cost
milliseconds on a CPU. Their folders load by path all the same (:mod:`embedsmith.encoders.multi_vector`), so
``LateInteraction("path/to/colbert")`` scores with a trained multi-vector model's own token vectors.
"""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InvalidInputError, NoTokenVectorsError
from ..quantization import l2_normalize

if TYPE_CHECKING:
    from ..store.base import Candidate, Collection

SOURCES = ("stored", "on-the-fly")
PRECISIONS = ("float32", "float16", "int8", "int2", "binary")
#: The codec of ``late_interaction=True`` (benchmarks/README.md, "Late interaction": quality and bytes per codec).
DEFAULT_PRECISION = "int2"
# int2: each value's 2-bit code -> its level in units of the token's RMS (Lloyd-Max levels of a unit Gaussian,
# which minimise the squared error of 4-level quantisation; the thresholds are the levels' midpoints).
_INT2_LEVELS = np.array([-1.510, -0.4528, 0.4528, 1.510], np.float32)
_INT2_EDGE = 0.9816
# Every byte's four codes (high bits first) as levels: decoding is one table lookup per byte.
# Each row (4 float32, 16 bytes) is viewed as one complex128 so the lookup is a 1-d take of 16-byte items,
# about 1.6x faster than indexing rows of a [256, 4] table.
_INT2_TABLE = np.ascontiguousarray(_INT2_LEVELS[(np.arange(256)[:, None] >> np.array([6, 4, 2, 0])) & 3]
                                   ).view(np.complex128)[:, 0]
#: Tokens a PCA is fitted on: at most this many, drawn evenly from the first documents written.
PCA_SAMPLE = 50_000


def maxsim(query: np.ndarray, docs: Sequence[np.ndarray]) -> np.ndarray:
    """MaxSim of one query against each document: mean over the query's token rows of their best dot product
    with any of the document's token rows. ``query`` [m, d] and each doc [n_i, d] float32 (unit rows for
    cosine). Returns float32 [len(docs)]; a document without tokens scores -1."""
    if not docs:
        return np.zeros(0, np.float32)
    q = np.asarray(query, np.float32)
    lengths = np.array([len(d) for d in docs])
    keep = np.flatnonzero(lengths > 0)
    out = np.full(len(docs), -1.0, np.float32)
    if len(keep) == 0 or len(q) == 0:
        return out
    flat = np.concatenate([np.asarray(docs[int(i)], np.float32) for i in keep])
    sims = q @ flat.T  # [m, total tokens]
    starts = np.concatenate([[0], np.cumsum(lengths[keep])[:-1]])
    best = np.maximum.reduceat(sims, starts, axis=1)  # [m, docs]: each query token's best per document
    out[keep] = best.mean(axis=0)
    return out


@dataclass(frozen=True)
class TokenCodec:
    """How a collection stores token vectors: optional PCA (centred, to ``dims``), then a precision.

    - ``float16``: 2 bytes per value.
    - ``int8``: one byte per value and a float16 scale per token (each token's largest value maps to 127).
    - ``int2``: two bits per value and a float16 scale per token (its RMS): the four Lloyd-Max levels of a
      Gaussian. A sixteenth of float32, and on Cranfield dev the same MaxSim quality (benchmarks/README.md).
    - ``binary``: one sign bit per value; documents score as the query's dot product with their signs
      (scaled by ``1/sqrt(dims)``), an asymmetric estimate that keeps the query exact.
    """

    precision: str = "int8"
    dims: int | None = None
    mean: np.ndarray | None = None
    components: np.ndarray | None = None  # [dims, dim]

    @classmethod
    def checked(cls, precision: Any = "int8", dims: Any = None) -> TokenCodec:
        if precision not in PRECISIONS:
            raise InvalidInputError(
                f"late-interaction precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
        if dims is not None and (isinstance(dims, bool) or not isinstance(dims, int) or not 8 <= dims <= 4096):
            raise InvalidInputError(f"late-interaction dims must be an integer from 8 to 4096, got {dims!r}")
        if precision == "binary" and dims is not None and dims % 8:
            raise InvalidInputError(f"binary token vectors need dims divisible by 8, got {dims}")
        if precision == "int2" and dims is not None and dims % 4:
            raise InvalidInputError(f"int2 token vectors need dims divisible by 4, got {dims}")
        return cls(str(precision), dims)

    @property
    def fitted(self) -> bool:
        return self.dims is None or self.components is not None

    def fit(self, tokens: np.ndarray) -> TokenCodec:
        """This codec with its PCA fitted on ``tokens`` [n, dim] (unit rows); unchanged without ``dims``."""
        if self.dims is None:
            return self
        x = np.asarray(tokens, np.float64)
        if self.dims > x.shape[1]:
            raise InvalidInputError(f"late-interaction dims={self.dims} is more than the encoder's {x.shape[1]}")
        if len(x) > PCA_SAMPLE:
            x = x[np.linspace(0, len(x) - 1, PCA_SAMPLE).astype(int)]
        mean = x.mean(axis=0)
        # The covariance's eigenvectors (dim x dim) are cheaper than an SVD of the samples and exactly PCA.
        cov = np.cov(x - mean, rowvar=False)
        vals, vecs = np.linalg.eigh(cov)
        comps = vecs[:, np.argsort(-vals)[: self.dims]].T
        comps *= np.where(comps[np.arange(len(comps)), np.abs(comps).argmax(axis=1)] < 0, -1.0, 1.0)[:, None]
        return TokenCodec(self.precision, self.dims, mean.astype(np.float32), comps.astype(np.float32))

    def project(self, tokens: np.ndarray) -> np.ndarray:
        """Token vectors in the stored space (PCA-reduced when fitted), unit rows, float32."""
        t = np.asarray(tokens, np.float32)
        if self.components is not None and self.mean is not None:
            t = (t - self.mean) @ self.components.T
        return l2_normalize(t)

    def encode(self, tokens: np.ndarray) -> bytes:
        """``tokens`` [n, dim] (unit rows) as stored bytes."""
        t = self.project(tokens)
        if self.precision == "float32":
            return t.astype("<f4").tobytes()
        if self.precision == "float16":
            return t.astype("<f2").tobytes()
        if self.precision == "int8":
            scale = np.maximum(np.abs(t).max(axis=1, keepdims=True), 1e-8)
            q = np.clip(np.rint(t / scale * 127), -127, 127).astype(np.int8)
            return scale.astype("<f2").tobytes() + q.tobytes()
        if self.precision == "int2":
            if t.shape[1] % 4:
                raise InvalidInputError(f"int2 token vectors need a width divisible by 4, got {t.shape[1]}")
            rms = np.maximum(np.sqrt((t * t).mean(axis=1, keepdims=True)), 1e-8)
            code = ((t > 0).astype(np.uint8) << 1) | (np.abs(t) > _INT2_EDGE * rms).astype(np.uint8)
            # sign and magnitude -> the index of the level: (0,1) -> 0, (0,0) -> 1, (1,0) -> 2, (1,1) -> 3
            code = np.array([1, 0, 2, 3], np.uint8)[code].reshape(len(t), -1, 4)
            packed = (code[..., 0] << 6) | (code[..., 1] << 4) | (code[..., 2] << 2) | code[..., 3]
            return rms.astype("<f2").tobytes() + packed.astype(np.uint8).tobytes()
        return np.packbits(t > 0, axis=1).tobytes()

    def decode(self, blob: bytes, n: int, d: int) -> np.ndarray:
        """Stored bytes of ``n`` tokens of width ``d`` back to float32 [n, d]."""
        if self.precision == "float32":
            return np.frombuffer(blob, "<f4").reshape(n, d)
        if self.precision == "float16":
            return np.frombuffer(blob, "<f2").reshape(n, d).astype(np.float32)
        if self.precision == "int8":
            scale = np.frombuffer(blob, "<f2", count=n).astype(np.float32).reshape(n, 1)
            q = np.frombuffer(blob, np.int8, offset=2 * n).reshape(n, d)
            return q.astype(np.float32) * (scale / 127)
        if self.precision == "int2":
            rms = np.frombuffer(blob, "<f2", count=n).astype(np.float32).reshape(n, 1)
            packed = np.frombuffer(blob, np.uint8, offset=2 * n).reshape(n, d // 4)
            return _INT2_TABLE.take(packed).view(np.float32).reshape(n, d) * rms
        bits = np.unpackbits(np.frombuffer(blob, np.uint8).reshape(n, -1), axis=1)[:, :d]
        return (bits.astype(np.float32) * 2 - 1) / np.sqrt(d)

    def bytes_per_token(self, dim: int) -> float:
        d = self.dims or dim
        return {"float32": 4 * d, "float16": 2 * d, "int8": d + 2, "int2": d / 4 + 2, "binary": d / 8}[self.precision]

    # -- persisted with the collection ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"precision": self.precision, "dims": self.dims}
        if self.components is not None and self.mean is not None:
            buf = io.BytesIO()
            np.savez(buf, mean=self.mean, components=self.components)
            out["pca"] = base64.b64encode(buf.getvalue()).decode("ascii")
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TokenCodec:
        codec = cls.checked(d.get("precision", "int8"), d.get("dims"))
        if d.get("pca"):
            arrays = np.load(io.BytesIO(base64.b64decode(d["pca"])))
            return TokenCodec(codec.precision, codec.dims, arrays["mean"], arrays["components"])
        return codec


class LateInteraction:
    """MaxSim over the candidates' token vectors; usable wherever a reranker is (``search(rerank=...)``).

    Args:
        encoder: what makes the token vectors: None (the collection's own encoder), an encoder, or a name.
        source: 'auto' (the collection's stored token vectors when it has them, else on the fly),
            'stored' (an error when the collection has none) or 'on-the-fly'.
        special_tokens: score with the query's [CLS]/[SEP] (and, on the fly, the documents'; stored token
            vectors always hold them).
    """

    name = "maxsim"

    def __init__(self, encoder: Any = None, *, source: str = "auto", special_tokens: bool = True) -> None:
        if source not in ("auto", *SOURCES):
            raise InvalidInputError(f"late-interaction source {source!r}: expected auto, stored or on-the-fly")
        if isinstance(encoder, str):
            from ..encoders import load_encoder

            encoder = load_encoder(encoder)
        self.encoder = encoder
        self.source = source
        self.special_tokens = bool(special_tokens)
        self.last_latency_s = 0.0
        self.backend = "maxsim"
        #: (query, encoder, token vectors) handed over by a search that embedded the query in one pass
        self._primed: tuple[str, Any, np.ndarray] | None = None

    def prime(self, query: str, encoder: Any, tokens: np.ndarray) -> None:
        """Hand over ``query``'s token vectors [m, dim] from ``encoder``, computed by the search in the same
        forward pass as its pooled vector, so that scoring it does not encode the query again. One entry,
        replaced whole (a single assignment): a search in another thread that replaces it only costs a
        recomputation here, never a wrong answer, because the query text and encoder are checked."""
        self._primed = (query, encoder, tokens)

    def _query_tokens(self, enc: Any, query: str) -> np.ndarray:
        primed = self._primed
        if primed is not None and primed[0] == query and primed[1] is enc:
            return primed[2]
        return enc.token_vectors([query], kind="query", special_tokens=self.special_tokens)[0]

    def scoring_encoder(self, coll: Collection) -> Any:
        """The encoder whose query token vectors a search in ``coll`` will score with."""
        return self._encoder_for(coll)

    def _encoder_for(self, coll: Collection | None) -> Any:
        if self.encoder is not None:
            return self.encoder
        if coll is None:
            raise InvalidInputError("late interaction outside a collection needs an encoder: LateInteraction('minilm')")
        return coll.encoder

    def scores(self, query: str, texts: Sequence[str], *, coll: Collection | None = None,
               ids: Sequence[str] | None = None) -> np.ndarray:
        """MaxSim of ``query`` against each text (the collection's stored token vectors for ``ids`` when it has
        them and the encoder is its own), float32 [len(texts)]."""
        if not isinstance(query, str) or not query.strip():
            raise InvalidInputError("query is empty")
        start = time.perf_counter()
        enc = self._encoder_for(coll)
        stored = coll is not None and ids is not None and self._use_stored(coll, enc)
        q = self._query_tokens(enc, query)
        if stored:
            assert coll is not None and ids is not None  # narrowed above
            codec, docs = coll._late_tokens(list(ids), list(texts))
            out = maxsim(codec.project(q), docs)
        else:
            docs = enc.token_vectors(list(texts), kind="document", special_tokens=self.special_tokens) if texts else []
            out = maxsim(q, docs)
        self.last_latency_s = time.perf_counter() - start
        return out

    def _use_stored(self, coll: Collection, enc: Any) -> bool:
        has = coll.late_interaction is not None
        if self.source == "stored" and not has:
            raise NoTokenVectorsError(
                f"collection {coll.name!r} stores no token vectors; create it with late_interaction=True "
                "(`embedsmith index --late-interaction`), or rerank with source='on-the-fly'"
            )
        if self.source == "stored" and enc is not coll.encoder:
            raise InvalidInputError("stored token vectors are the collection's encoder's; pass no encoder")
        return has and self.source != "on-the-fly" and enc is coll.encoder

    def logits(self, query: str, texts: Sequence[str]) -> np.ndarray:
        """MaxSim scores of ``texts`` computed on the fly (the :class:`Reranker` interface)."""
        return self.scores(query, texts)

    def rerank(self, query: str, texts: Sequence[str], *, top_n: int | None = None,
               coll: Collection | None = None, ids: Sequence[str] | None = None) -> list[tuple[int, float, float]]:
        """``(index into texts, score, score)`` best first: MaxSim is both the score and the 'logit'."""
        s = self.scores(query, texts, coll=coll, ids=ids)
        order = np.argsort(-s, kind="stable")[: top_n or len(s)]
        return [(int(i), float(s[i]), float(s[i])) for i in order]

    def rerank_candidates(self, query: str, pool: Sequence[Candidate], coll: Collection
                          ) -> list[tuple[int, float, float]]:
        return self.rerank(query, [str(c.text) for c in pool], coll=coll, ids=[c.id for c in pool])

    def __repr__(self) -> str:
        return f"LateInteraction(source={self.source!r})"


__all__ = ["DEFAULT_PRECISION", "PRECISIONS", "SOURCES", "LateInteraction", "TokenCodec", "maxsim"]
