"""Every check on what a caller hands a collection, shared by both backends.

Each failure is an :class:`~embedsmith.errors.InvalidInputError` naming the value, raised before anything is
written. What one backend cannot store (a NUL character in PostgreSQL text, a lone surrogate in UTF-8, a key
SQLite's JSON paths cannot address) is refused on both, so a collection can always move between them.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import InvalidInputError
from ..types import Metric

MAX_METADATA_DEPTH = 32  # nesting levels of a metadata value (dicts and lists); filters address the top level


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def check_string(value: str, what: str) -> str:
    """Refuse what UTF-8 and PostgreSQL cannot store: lone surrogates and NUL characters."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInputError(
            f"{what} is not valid Unicode (a lone surrogate {value[exc.start]!r} at position {exc.start}): "
            f"{_short(value)}"
        ) from None
    if "\x00" in value:
        raise InvalidInputError(f"{what} contains a NUL character: {_short(value)}")
    return value


def check_vectors(vectors: Any, dim: int, metric: Metric, name: str, n: int | None = None, *,
                  normalize: bool = True) -> np.ndarray:
    """Vectors as C-contiguous float32 [n, dim], unit length for cosine (unless ``normalize`` is False: exported
    vectors are stored as they were, bit for bit).

    Only real numbers are accepted: strings that look like numbers, complex numbers, objects and ragged lists
    are refused (numpy would convert some of them silently).
    """
    try:
        raw = np.asarray(vectors)
    except (ValueError, TypeError) as exc:
        raise InvalidInputError(f"vectors must be a 2-D array of numbers [n, {dim}]: {exc}") from None
    if raw.dtype.kind not in "fiu":
        raise InvalidInputError(
            f"vectors must be real numbers, got an array of dtype {raw.dtype} (shape {tuple(raw.shape)})"
        )
    v = raw.astype(np.float32, copy=False)
    if v.ndim == 1:
        v = v[None, :]
    if v.ndim != 2 or v.shape[1] != dim:
        got = v.shape[-1] if v.ndim >= 1 else 0
        raise InvalidInputError(
            f"vectors have dimension {got} (shape {tuple(v.shape)}), collection {name!r} stores {dim}"
        )
    if n is not None and v.shape[0] != n:
        raise InvalidInputError(f"got {v.shape[0]} vectors for {n} records")
    bad = ~np.isfinite(v).all(axis=1)
    if bad.any():
        raise InvalidInputError(f"vector {int(np.argmax(bad))} contains NaN or infinity")
    if metric is Metric.COSINE and normalize:
        norms = np.linalg.norm(v, axis=1, keepdims=True)
        if (norms == 0).any():
            raise InvalidInputError(f"vector {int(np.argmax(norms[:, 0] == 0))} is all zeros (no cosine)")
        v = v / norms
    return np.ascontiguousarray(v, dtype=np.float32)


def check_ids(ids: Sequence[str] | None, n: int) -> list[str]:
    """``n`` distinct non-empty ids (new random ones when None)."""
    if ids is None:
        return [uuid.uuid4().hex for _ in range(n)]
    if isinstance(ids, str):
        raise InvalidInputError("ids must be a list of strings, not a single string")
    out = list(ids)
    if len(out) != n:
        raise InvalidInputError(f"got {len(out)} ids for {n} records")
    for i, x in enumerate(out):
        if not isinstance(x, str) or not x:
            raise InvalidInputError(f"ids[{i}] must be a non-empty string, got {x!r}")
        check_string(x, f"ids[{i}]")
    if len(set(out)) != n:
        seen: set[str] = set()
        dup = next(x for x in out if x in seen or seen.add(x))  # type: ignore[func-returns-value]
        raise InvalidInputError(f"id {dup!r} appears more than once in this call")
    return out


def check_id_list(ids: Sequence[str]) -> list[str]:
    """Ids to look up or delete (absent ones are fine; they simply match nothing)."""
    if isinstance(ids, str):
        raise InvalidInputError("ids must be a list of strings, not a single string")
    out = list(ids)
    for i, x in enumerate(out):
        if not isinstance(x, str):
            raise InvalidInputError(f"ids[{i}] must be a string, got {x!r}")
        check_string(x, f"ids[{i}]")
    return out


def check_metadata_key(key: Any, what: str) -> str:
    """A top-level metadata key: a string that every backend's filters can address."""
    if not isinstance(key, str):
        raise InvalidInputError(f"{what}: metadata keys must be strings, got {key!r}")
    check_string(key, f"{what} key {key!r}")
    if '"' in key:
        # SQLite's JSON paths end a quoted label at the first '"' (no escapes, checked on 3.40), so such a
        # key could be stored but never filtered on; it is refused on both backends.
        raise InvalidInputError(f"{what}: metadata key {key!r} contains '\"', which filters cannot address")
    return key


def _check_value(value: Any, what: str) -> None:
    """Walk a metadata value without recursion (a deep value must fail with a clear error, not RecursionError)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, str):
            check_string(v, what)
        elif isinstance(v, Mapping) or isinstance(v, (list, tuple)):
            if depth > MAX_METADATA_DEPTH:
                raise InvalidInputError(f"{what} is nested deeper than {MAX_METADATA_DEPTH} levels")
            if isinstance(v, Mapping):
                for k, x in v.items():
                    if isinstance(k, str):
                        check_string(k, f"{what} key {_short(k)}")
                    stack.append((x, depth + 1))
            else:
                stack.extend((x, depth + 1) for x in v)


def check_metadata(metadata: Sequence[Mapping[str, Any]] | None, n: int) -> list[str]:
    """``n`` metadata dicts as JSON text (UTF-8 kept as is: SQLite's JSON paths compare it raw)."""
    if metadata is None:
        return ["{}"] * n
    items = list(metadata)
    if len(items) != n:
        raise InvalidInputError(f"got {len(items)} metadata entries for {n} records")
    out = []
    for i, m in enumerate(items):
        if m is None:
            m = {}
        if not isinstance(m, Mapping):
            raise InvalidInputError(f"metadata[{i}] must be a dict, got {type(m).__name__}")
        for key, value in m.items():
            check_metadata_key(key, f"metadata[{i}]")
            _check_value(value, f"metadata[{i}][{key!r}]")
        try:
            out.append(json.dumps(dict(m), allow_nan=False, ensure_ascii=False))
        except (TypeError, ValueError, RecursionError) as exc:
            raise InvalidInputError(f"metadata[{i}] is not JSON-serialisable: {exc}") from None
    return out


def check_optional_texts(texts: Sequence[str | None] | None, n: int) -> list[str | None]:
    """Texts beside vectors: ``n`` strings or None."""
    if texts is None:
        return [None] * n
    if isinstance(texts, str):
        raise InvalidInputError("texts must be a list of strings, not a single string")
    out = list(texts)
    if len(out) != n:
        raise InvalidInputError(f"got {len(out)} texts for {n} vectors")
    for i, x in enumerate(out):
        if x is not None:
            if not isinstance(x, str):
                raise InvalidInputError(f"texts[{i}] is {type(x).__name__}, expected str or None")
            check_string(x, f"texts[{i}]")
    return out


def check_texts(texts: Sequence[str]) -> list[str]:
    """Texts to embed: non-empty strings that can be stored."""
    from ..encoders.base import check_texts as check_encoder_texts

    out = check_encoder_texts(texts)
    for i, t in enumerate(out):
        check_string(t, f"texts[{i}]")
    return out


__all__ = ["MAX_METADATA_DEPTH", "check_id_list", "check_ids", "check_metadata", "check_metadata_key",
           "check_optional_texts", "check_string", "check_texts", "check_vectors"]
