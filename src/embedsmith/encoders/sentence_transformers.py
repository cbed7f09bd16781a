"""PyTorch backend: sentence-transformers' own model, on CPU or CUDA.

On CUDA the model is fed by a pipeline (``pipelined``): texts sorted and batched by a token budget, tokenised in
a background thread (the Rust tokenizer releases the GIL) into pinned host memory, copied without blocking,
and the sentence vectors kept on the GPU until the end, so the GPU never waits on the host between batches;
``SentenceTransformer.encode`` tokenises, copies and synchronises batch by batch on one thread.
"""

from __future__ import annotations

import queue
import threading
from typing import Any

import numpy as np

from ..errors import require
from ..types import Kind
from .base import BaseEncoder, batches_by_tokens
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
        pipelined: feed the model from a tokenising thread (default: on CUDA only). The vectors are
            sentence-transformers' own (its modules run on the same features); only the feeding differs.
    """

    #: padded tokens per batch on the pipelined path: the GPU wants large batches, the host small ones
    GPU_BATCH_TOKENS = 65_536

    def __init__(
        self,
        folder: ModelFolder,
        *,
        name: str,
        device: str = "cpu",
        threads: int | None = None,
        prompts: dict[str, str] | None = None,
        half: bool = False,
        pipelined: bool | None = None,
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
        mask = self._counter.encode("a").special_tokens_mask
        own = [i for i, m in enumerate(mask) if not m]
        self.special_tokens = (own[0], len(mask) - 1 - own[-1])
        self.pipelined = device.startswith("cuda") if pipelined is None else bool(pipelined)
        if self.pipelined and device.startswith("cuda"):
            self.default_batch_size = 256

    def _token_lengths(self, texts: list[str], kind: Kind | None) -> list[int]:
        prompt = self._prompt(kind)
        return [len(e.ids) for e in self._counter.encode_batch_fast([prompt + t for t in texts])]

    def _embed(self, texts: list[str], kind: Kind | None, batch_size: int, show_progress: bool) -> np.ndarray:
        lengths = self._token_lengths(texts, kind)
        self._warn_long(lengths)
        prompt = self._prompt(kind)
        if self.pipelined:
            return self._embed_pipelined([prompt + t for t in texts] if prompt else texts,
                                         [min(n, self.max_tokens) for n in lengths], batch_size, show_progress)
        vectors = self.model.encode(
            [prompt + t for t in texts] if prompt else texts,
            batch_size=batch_size,
            show_progress_bar=show_progress,
            convert_to_numpy=True,
            normalize_embeddings=False,
        )
        return np.asarray(vectors, dtype=np.float32)

    def _embed_tokens(self, texts: list[str], kind: Kind | None, batch_size: int, show_progress: bool
                      ) -> tuple[np.ndarray, list[np.ndarray]]:
        import torch

        self._warn_long(self._token_lengths(texts, kind))
        prompt = self._prompt(kind)
        items = [prompt + t for t in texts] if prompt else texts
        # sentence-transformers gives one of its outputs per call; "None" gives all, the padding cut off.
        outs = self.model.encode(items, batch_size=batch_size, show_progress_bar=show_progress,
                                 output_value=None, convert_to_numpy=False, normalize_embeddings=False)
        pooled = np.stack([o["sentence_embedding"].float().cpu().numpy() for o in outs]).astype(np.float32)
        with torch.inference_mode():
            states = [o["token_embeddings"][: int(o["attention_mask"].sum())].float().cpu().numpy() for o in outs]
        return pooled, states

    def _embed_pipelined(self, texts: list[str], lengths: list[int], batch_size: int,
                         show_progress: bool) -> np.ndarray:
        import torch
        from tqdm.auto import tqdm

        cuda = self.device.startswith("cuda")
        budget = self.GPU_BATCH_TOKENS if cuda else 4096
        batches = list(batches_by_tokens(lengths, batch_size, budget))
        ready: queue.Queue[Any] = queue.Queue(maxsize=4)
        stop = threading.Event()

        def offer(item: Any) -> bool:
            """Hand ``item`` to the consumer; False once it has stopped (an error on its side)."""
            while not stop.is_set():
                try:
                    ready.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def produce() -> None:
            try:
                for idx in batches:
                    features = self.model.tokenize([texts[i] for i in idx])
                    if cuda:
                        features = {k: v.pin_memory() if hasattr(v, "pin_memory") else v for k, v in features.items()}
                    if not offer((idx, features)):
                        return
                offer(None)
            except BaseException as exc:  # handed to the consumer, which raises it
                offer(exc)

        worker = threading.Thread(target=produce, name="embedsmith-tokenize", daemon=True)
        worker.start()
        kept: list[tuple[Any, Any]] = []
        try:
            with torch.inference_mode(), tqdm(total=len(texts), disable=not show_progress, unit="text",
                                                desc=f"encoding ({self.name})") as bar:
                while (item := ready.get()) is not None:
                    if isinstance(item, BaseException):
                        raise item
                    idx, features = item
                    features = {k: v.to(self.device, non_blocking=True) if hasattr(v, "to") else v
                                for k, v in features.items()}
                    kept.append((idx, self.model(features)["sentence_embedding"].float()))
                    bar.update(len(idx))
        finally:
            stop.set()
            worker.join()
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for idx, emb in kept:  # one synchronisation per batch, after the GPU has had all of them
            out[idx] = emb.cpu().numpy()
        return out
