"""Cross-encoder reranking with any local sentence-transformers ``CrossEncoder`` folder."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidInputError, ModelNotFoundError, require


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function, stable for large |x|. Returns float32 of the same shape."""
    x = np.asarray(x, dtype=np.float64)
    out = np.where(x >= 0, 1 / (1 + np.exp(-np.abs(x))), np.exp(-np.abs(x)) / (1 + np.exp(-np.abs(x))))
    return out.astype(np.float32)


class Reranker:
    """Scores (query, text) pairs with a cross-encoder.

    Scores are reported two ways, so nobody has to guess the scale: ``logits`` (the model's raw output)
    and ``probabilities`` (their sigmoid, in 0..1). Single-logit cross-encoders (ms-marco-MiniLM,
    bge-reranker) are trained with a sigmoid on that logit.

    Args:
        path: a local cross-encoder folder.
        device: 'auto' (CUDA when present), 'cpu' or 'cuda'.
        batch_size: pairs per forward pass.
        max_length: tokens per pair (default: the model's).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        device: str = "auto",
        batch_size: int = 32,
        max_length: int | None = None,
    ) -> None:
        folder = Path(path).expanduser()
        if not (folder / "config.json").is_file():
            raise ModelNotFoundError(
                f"reranker folder {str(folder)!r} does not exist or has no config.json; no reranker ships offline: "
                "pass a local cross-encoder folder, or train one with `embedsmith finetune-reranker`"
            )
        st: Any = require("sentence_transformers", extra="torch", what="reranking")
        import torch

        from ..encoders.registry import resolve_device

        self.path = folder
        self.name = folder.name
        self.batch_size = batch_size
        self.model = st.CrossEncoder(
            str(folder), device=resolve_device(device), local_files_only=True, max_length=max_length,
            activation_fn=torch.nn.Identity(),
        )
        labels = int(self.model.num_labels)
        if labels != 1:
            raise InvalidInputError(f"reranker {self.name!r} has {labels} outputs; expected a single relevance logit")
        self.last_latency_s = 0.0

    def logits(self, query: str, texts: Sequence[str]) -> np.ndarray:
        """Raw relevance logits, float32 [len(texts)], higher is more relevant."""
        if not isinstance(query, str) or not query.strip():
            raise InvalidInputError("query is empty")
        items = list(texts)
        if not items:
            return np.zeros(0, np.float32)
        for i, t in enumerate(items):
            if not isinstance(t, str):
                raise InvalidInputError(f"texts[{i}] is {type(t).__name__}, expected str")
        start = time.perf_counter()
        out = self.model.predict([(query, t) for t in items], batch_size=self.batch_size, show_progress_bar=False,
                                 convert_to_numpy=True)
        self.last_latency_s = time.perf_counter() - start
        return np.asarray(out, dtype=np.float32).reshape(-1)

    def rerank(self, query: str, texts: Sequence[str], *, top_n: int | None = None) -> list[tuple[int, float, float]]:
        """Order texts by relevance.

        Returns:
            ``(index into texts, probability, logit)`` best first, ``top_n`` of them (all by default).
        """
        logits = self.logits(query, texts)
        order = np.argsort(-logits, kind="stable")[: top_n or len(logits)]
        probs = sigmoid(logits)
        return [(int(i), float(probs[i]), float(logits[i])) for i in order]

    def __repr__(self) -> str:
        return f"Reranker({str(self.path)!r})"
