"""Multi-vector (ColBERT-style) models by path: sentence-transformers 6's ``MultiVectorEncoder`` folders, and
the PyLate and Stanford ColBERT folders it reads.

Such a model is trained to give each text a matrix of unit token vectors scored by MaxSim, not one vector.
Here it is an encoder like the others: :meth:`~BaseEncoder.token_vectors` and ``embed_tokens`` give the
model's own token matrices (its prompts or ``[Q]``/``[D]`` prefixes, query expansion, projection, skiplist
mask and normalisation all applied by sentence-transformers), so ``LateInteraction(encoder=path)``,
``--rerank maxsim:PATH`` and a collection's stored token vectors work with it unchanged.

``encode`` returns the mean of a text's token vectors (renormalised). The model was not trained for that
single vector: it serves as a first stage where a collection needs one, and is weaker than a bi-encoder's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidInputError, require
from ..types import Kind
from .base import BaseEncoder, file_digest
from .folder import ModelFolder, _read_json

#: ``model_type`` in config_sentence_transformers.json: sentence-transformers' own, and PyLate's (<= 1.3).
MULTI_VECTOR_TYPES = ("MultiVectorEncoder", "ColBERT")


def is_multi_vector_folder(path: str | Path) -> bool:
    """True for a multi-vector model folder: ``model_type`` MultiVectorEncoder (sentence-transformers 6) or
    ColBERT (PyLate) in config_sentence_transformers.json, or a Stanford ColBERT (``HF_ColBERT``) config.json."""
    p = Path(path)
    if not p.is_dir():
        return False
    if _read_json(p / "config_sentence_transformers.json").get("model_type") in MULTI_VECTOR_TYPES:
        return True
    return "HF_ColBERT" in (_read_json(p / "config.json").get("architectures") or [])


class MultiVectorTorchEncoder(BaseEncoder):
    """A multi-vector model run by sentence-transformers' ``MultiVectorEncoder`` (torch).

    Args:
        path: the model folder (see :func:`is_multi_vector_folder`).
        name: display name.
        device: 'cpu', 'cuda' or 'cuda:N'.
        threads: torch intra-op threads (default: torch's choice).
        prompts: overrides the folder's query/document prompts.
        half: float16 weights (CUDA only).
        model: an already built ``MultiVectorEncoder`` to wrap instead of loading ``path`` (training uses it
            to score the untrained start).
    """

    def __init__(self, path: str | Path, *, name: str, device: str = "cpu", threads: int | None = None,
                 prompts: dict[str, str] | None = None, half: bool = False, model: Any = None) -> None:
        st = require("sentence_transformers", extra="torch", what="multi-vector models")
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.path = Path(path)
        self.name = name
        if model is None:
            model = st.MultiVectorEncoder(str(self.path), device=device, local_files_only=True)  # type: ignore[attr-defined]
        self.model: Any = model
        if half:
            self.model.half()
        self.dim = int(self._probe_dim())
        self.max_tokens = int(self.model.max_seq_length or 512)
        own = {("document" if k in ("passage", "corpus") else k): v for k, v in (self.model.prompts or {}).items()
               if v and k in ("query", "document", "passage", "corpus")}
        self.prompts = dict(own if prompts is None else prompts)
        self.backend = "torch-fp16" if half else "torch"
        self.device = device
        self.fingerprint = f"{self._digest()}:multivector:{self.backend}"
        tok = self.model.tokenizer.backend_tokenizer
        self._counter = tok.__class__.from_str(tok.to_str())
        self._counter.no_padding()
        self._counter.no_truncation()
        self.fast_tokenizer = self._counter
        # The model's mask picks the tokens it scores (special tokens, prefixes and expansion included), so
        # there is nothing for ``special_tokens=False`` to cut.
        self.special_tokens = (0, 0)

    def _probe_dim(self) -> int:
        dim = self.model.get_embedding_dimension()
        if dim:
            return int(dim)
        return int(self.model.encode(["dimension"], task="document", convert_to_numpy=True)[0].shape[1])

    def _digest(self) -> str:
        """The weights of every module (the backbone and, e.g., the projection), not the backbone's alone."""
        files = sorted(self.path.rglob("model.safetensors")) + sorted(self.path.rglob("pytorch_model.bin"))
        files = [f for f in files if "checkpoint" not in f.parts[-2]]
        if not files:
            return "unsaved"
        return "+".join(file_digest(f)[:12] for f in files)

    def _task(self, kind: Kind | None) -> str:
        return "query" if kind is Kind.QUERY else "document"

    def _token_lengths(self, texts: list[str], kind: Kind | None) -> list[int]:
        prompt = self._prompt(kind)
        return [len(e.ids) for e in self._counter.encode_batch_fast([prompt + t for t in texts])]

    def _embed_tokens(self, texts: list[str], kind: Kind | None, batch_size: int, show_progress: bool
                      ) -> tuple[np.ndarray, list[np.ndarray]]:
        self._warn_long(self._token_lengths(texts, kind))
        # The prompt goes through sentence-transformers so a [Q]/[D] prefix registered as one token stays one.
        states = self.model.encode(texts, prompt=self._prompt(kind), task=self._task(kind), batch_size=batch_size,
                                   show_progress_bar=show_progress, convert_to_numpy=True)
        tokens = [np.asarray(s, dtype=np.float32) for s in states]
        pooled = np.stack([t.mean(axis=0) if len(t) else np.zeros(self.dim, np.float32) for t in tokens])
        return pooled.astype(np.float32), tokens

    def _embed(self, texts: list[str], kind: Kind | None, batch_size: int, show_progress: bool) -> np.ndarray:
        return self._embed_tokens(texts, kind, batch_size, show_progress)[0]


def load_multi_vector(path: Path, *, name: str, backend: str, device: str, threads: int | None,
                      prompts: dict[str, str] | None) -> MultiVectorTorchEncoder:
    """A multi-vector folder as an encoder (torch only: its projection and masks are sentence-transformers
    modules, which the ONNX export does not cover)."""
    if backend not in ("auto", "torch", "torch-fp16"):
        raise InvalidInputError(f"{name} is a multi-vector model, run by torch; use backend 'auto', 'torch' or "
                                f"'torch-fp16', got {backend!r}")
    if backend == "torch-fp16" and not device.startswith("cuda"):
        raise InvalidInputError("backend 'torch-fp16' runs on CUDA only; on CPU use torch")
    ModelFolder.open(path)  # the usual clear error for a folder without weights
    return MultiVectorTorchEncoder(path, name=name, device=device, threads=threads, prompts=prompts,
                                   half=backend == "torch-fp16")
