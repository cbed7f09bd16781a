"""Encoding for evaluation: any object with an ``encode`` method, a per-run cache, and storage settings.

Tasks never call an encoder directly: they go through :class:`EmbeddingCache`, so comparing modes,
dimensions or precisions on the same texts encodes each text once per run. Dimension cuts and precisions
are applied here, after encoding, in the same way the store applies them, so they work for third-party
encoders too.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import InvalidInputError
from ..quantization import Int8Calibration, dequantize_int8, quantize, truncate_dims, unpack_binary
from ..types import Precision, parse_enum


def model_name(encoder: Any) -> str:
    name = getattr(encoder, "name", None)
    return str(name) if name else type(encoder).__name__


def model_revision(encoder: Any) -> str | None:
    fp = getattr(encoder, "fingerprint", None)
    return str(fp) if fp else None


def _accepts(fn: Any, param: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return param in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def encode_with(encoder: Any, texts: Sequence[str], *, kind: str | None = None,
                show_progress: bool = False) -> np.ndarray:
    """Encode with an embedsmith encoder or any object whose ``encode(list[str])`` returns vectors.

    Our encoders get ``kind`` (query/document prompts); sentence-transformers models get
    ``encode_query``/``encode_document`` when they have them; anything else gets plain ``encode``.

    Raises:
        InvalidInputError: the encoder has no ``encode`` method or returned something that is not [n, dim].
    """
    texts = list(texts)
    encode = getattr(encoder, "encode", None)
    if not callable(encode):
        raise InvalidInputError(f"{type(encoder).__name__} has no encode method")
    kwargs: dict[str, Any] = {}
    if _accepts(encode, "show_progress"):
        kwargs["show_progress"] = show_progress
    elif _accepts(encode, "show_progress_bar"):
        kwargs["show_progress_bar"] = show_progress
    if kind is not None and _accepts(encode, "kind"):
        out = encode(texts, kind=kind, **kwargs)
    elif kind is not None and callable(getattr(encoder, f"encode_{kind}", None)):
        out = getattr(encoder, f"encode_{kind}")(texts, **kwargs)
    else:
        out = encode(texts, **kwargs)
    if hasattr(out, "detach"):  # a torch tensor
        out = out.detach().cpu().numpy()
    arr = np.asarray(out, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[0] != len(texts):
        raise InvalidInputError(
            f"{model_name(encoder)}.encode returned shape {list(arr.shape)} for {len(texts)} texts; "
            "expected [n, dim]"
        )
    return arr


class EmbeddingCache:
    """Vectors computed in this run, keyed by encoder, kind and text.

    ``encode_seconds`` adds up the time spent inside encoders, so a task can report its share of
    encoding against everything else.
    """

    def __init__(self, *, show_progress: bool = False) -> None:
        self._tables: dict[tuple[int, str | None], dict[str, np.ndarray]] = {}
        self._encoders: list[Any] = []  # keep encoders alive so their id() stays unique
        self.encode_seconds = 0.0
        self.show_progress = show_progress

    def encode(self, encoder: Any, texts: Sequence[str], *, kind: str | None = None) -> np.ndarray:
        if not texts:
            raise InvalidInputError("nothing to encode: the task holds no texts")
        if not any(e is encoder for e in self._encoders):
            self._encoders.append(encoder)
        table = self._tables.setdefault((id(encoder), kind), {})
        missing = [t for t in dict.fromkeys(texts) if t not in table]
        if missing:
            start = time.perf_counter()
            vectors = encode_with(encoder, missing, kind=kind,
                                  show_progress=self.show_progress and len(missing) > 256)
            self.encode_seconds += time.perf_counter() - start
            table.update(zip(missing, vectors, strict=True))
        return np.stack([table[t] for t in texts])


def apply_setting(vectors: np.ndarray, *, dims: int | None = None,
                  precision: str | Precision = Precision.FLOAT32) -> np.ndarray:
    """What a store would keep for these vectors, as float32 for scoring.

    The first ``dims`` dimensions are kept and renormalised; float16 is rounded; int8 goes through the
    store's fixed calibration (:meth:`Int8Calibration.default`) and back; binary becomes ±1 per dimension
    (so cosine on it ranks exactly as Hamming distance does).
    """
    p = parse_enum(Precision, precision, "precision")
    v = truncate_dims(np.asarray(vectors, np.float32), dims) if dims else np.asarray(vectors, np.float32)
    if p is Precision.FLOAT32:
        return v
    if p is Precision.FLOAT16:
        return v.astype(np.float16).astype(np.float32)
    if p is Precision.INT8:
        cal = Int8Calibration.default(v.shape[1])
        return dequantize_int8(quantize(v, p, calibration=cal), cal)
    return unpack_binary(quantize(v, p), v.shape[1])


def bytes_per_vector(dim: int, precision: str | Precision) -> int:
    p = parse_enum(Precision, precision, "precision")
    return {Precision.FLOAT32: 4 * dim, Precision.FLOAT16: 2 * dim, Precision.INT8: dim,
            Precision.BINARY: (dim + 7) // 8}[p]


def cosine_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of every row of ``a`` with every row of ``b``, in float32."""
    an = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    bn = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return np.asarray(an @ bn.T, dtype=np.float32)


def top_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest scores of each row, best first (ties by lower index)."""
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < scores.shape[1] else \
        np.tile(np.arange(scores.shape[1]), (scores.shape[0], 1))
    rows = np.arange(scores.shape[0])[:, None]
    order = np.lexsort((part, -scores[rows, part]), axis=1)
    return np.asarray(part[rows, order])
