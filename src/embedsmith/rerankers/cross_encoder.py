"""Cross-encoder reranking with any local sentence-transformers ``CrossEncoder`` folder."""

from __future__ import annotations

import json
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
        backend: 'auto' (exact ONNX on CPU, torch on CUDA), 'torch', 'onnx' (exact fp32) or 'onnx-int8'
            (per-channel dynamic int8: faster, slightly different scores).
        device: 'auto' (CUDA when present), 'cpu' or 'cuda'.
        batch_size: pairs per forward pass (an upper bound; long pairs go in smaller batches).
        max_length: tokens per (query, text) pair, cut longest-first (default: the model's, at most 512).
        threads: CPU threads for the ONNX backend.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        backend: str = "auto",
        device: str = "auto",
        batch_size: int = 32,
        max_length: int | None = None,
        threads: int | None = None,
    ) -> None:
        from ..encoders.folder import ModelFolder
        from ..encoders.registry import _onnx_ready, resolve_device

        folder = Path(path).expanduser()
        if not (folder / "config.json").is_file():
            raise ModelNotFoundError(
                f"reranker folder {str(folder)!r} does not exist or has no config.json; no reranker ships offline: "
                "pass a local cross-encoder folder, or train one with `embedsmith finetune-reranker`"
            )
        if backend not in ("auto", "torch", "onnx", "onnx-int8"):
            raise InvalidInputError(f"unknown backend {backend!r}; expected auto, torch, onnx or onnx-int8")
        config = json.loads((folder / "config.json").read_text())
        labels = len(config.get("id2label") or {}) or int(config.get("num_labels", 1))
        if labels != 1:
            raise InvalidInputError(f"reranker {folder.name!r} has {labels} outputs; expected a single relevance logit")
        tok_config = folder / "tokenizer_config.json"
        model_max = json.loads(tok_config.read_text()).get("model_max_length", 512) if tok_config.is_file() else 512
        limit = min(int(model_max) if model_max < 1e6 else 512, int(config.get("max_position_embeddings", 512)), 512)
        self.max_length = max_length or limit
        self.path = folder
        self.name = folder.name
        self.batch_size = batch_size
        self.last_latency_s = 0.0
        dev = resolve_device(device)
        model_folder = ModelFolder.open(folder)
        if backend == "auto":
            backend = "onnx" if dev == "cpu" and _onnx_ready(model_folder) else "torch"
        self.backend = backend
        self._session: Any = None
        self.model: Any = None
        if backend == "torch":
            st: Any = require("sentence_transformers", extra="torch", what="reranking with the torch backend")
            import torch

            self.model = st.CrossEncoder(
                str(folder), device=dev, local_files_only=True, max_length=self.max_length,
                activation_fn=torch.nn.Identity(),
            )
            return
        import onnxruntime as ort
        from tokenizers import Tokenizer

        from ..encoders.onnx import export_onnx, quantize_int8

        onnx_file = export_onnx(model_folder, head="relevance")
        if backend == "onnx-int8":
            onnx_file = quantize_int8(onnx_file)
        self._tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(self.max_length, strategy="longest_first")
        self._pad_id = self._tokenizer.token_to_id("[PAD]") or self._tokenizer.token_to_id("<pad>") or 0
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or os.cpu_count() or 1
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self._session = ort.InferenceSession(str(onnx_file), opts, providers=["CPUExecutionProvider"])
        self._inputs = {i.name for i in self._session.get_inputs()}

    def _onnx_logits(self, query: str, texts: list[str]) -> np.ndarray:
        from ..encoders.base import batches_by_tokens
        from ..encoders.onnx import MAX_BATCH_TOKENS

        encs = self._tokenizer.encode_batch([(query, t) for t in texts])
        lengths = [len(e.ids) for e in encs]
        out = np.empty(len(texts), dtype=np.float32)
        for idx in batches_by_tokens(lengths, self.batch_size, MAX_BATCH_TOKENS):
            width = lengths[idx[0]]
            ids = np.full((len(idx), width), self._pad_id, dtype=np.int64)
            types = np.zeros((len(idx), width), dtype=np.int64)
            mask = np.zeros((len(idx), width), dtype=np.int64)
            for row, i in enumerate(idx):
                n = lengths[i]
                ids[row, :n] = encs[i].ids
                types[row, :n] = encs[i].type_ids
                mask[row, :n] = 1
            feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
            logits = self._session.run(None, {k: v for k, v in feed.items() if k in self._inputs})[0]
            out[idx] = logits.reshape(len(idx), -1)[:, 0]
        return out

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
        if self._session is not None:
            out = self._onnx_logits(query, items)
        else:
            out = self.model.predict([(query, t) for t in items], batch_size=self.batch_size,
                                     show_progress_bar=False, convert_to_numpy=True)
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
        return f"Reranker({str(self.path)!r}, backend={self.backend!r})"
