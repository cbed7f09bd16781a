"""PyTorch backend: sentence-transformers' own model, on CPU or CUDA."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import require
from ..types import Kind
from .base import BaseEncoder
from .folder import ModelFolder


class TorchEncoder(BaseEncoder):
    """A sentence-transformers folder run by sentence-transformers.

    Args:
        folder: the model folder.
        name: display name.
        device: 'cpu', 'cuda' or 'cuda:N'.
        threads: torch intra-op threads (default: torch's choice).
        prompts: overrides the folder's prompts.
        half: run in float16 (CUDA only).
    """

    def __init__(
        self,
        folder: ModelFolder,
        *,
        name: str,
        device: str = "cpu",
        threads: int | None = None,
        prompts: dict[str, str] | None = None,
        half: bool = False,
    ) -> None:
        st = require("sentence_transformers", extra="torch", what="the torch backend")
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.folder = folder
        self.name = name
        self.model: Any = st.SentenceTransformer(  # type: ignore[attr-defined]
            str(folder.path), device=device, local_files_only=True
        )
        if half:
            self.model.half()
        self.dim = int(self.model.get_embedding_dimension())
        self.max_tokens = int(self.model.max_seq_length)
        self.prompts = dict(folder.prompts if prompts is None else prompts)
        self.backend = "torch-fp16" if half else "torch"
        self.device = device
        self.fingerprint = f"{folder.digest()[:16]}:{self.backend}"
        self._counter = self.model.tokenizer.backend_tokenizer.__class__.from_str(
            self.model.tokenizer.backend_tokenizer.to_str()
        )
        self._counter.no_padding()
        self._counter.no_truncation()
        self.fast_tokenizer = self._counter

    def _token_lengths(self, texts: list[str], kind: Kind | None) -> list[int]:
        prompt = self._prompt(kind)
        return [len(e.ids) for e in self._counter.encode_batch_fast([prompt + t for t in texts])]

    def _embed(self, texts: list[str], kind: Kind | None, batch_size: int, show_progress: bool) -> np.ndarray:
        self._warn_long(self._token_lengths(texts, kind))
        prompt = self._prompt(kind)
        vectors = self.model.encode(
            [prompt + t for t in texts] if prompt else texts,
            batch_size=batch_size,
            show_progress_bar=show_progress,
            convert_to_numpy=True,
            normalize_embeddings=False,
        )
        return np.asarray(vectors, dtype=np.float32)
