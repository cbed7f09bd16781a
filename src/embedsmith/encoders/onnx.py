"""ONNX Runtime backend: tokenizers + onnxruntime, no torch at run time.

The graph is exported once from the folder's own weights (this step needs torch) and cached under
``cache_dir()/onnx/<weights sha256>/``; later loads need only onnxruntime and tokenizers.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..errors import MissingExtraError
from ..types import Kind
from .base import BaseEncoder, batches_by_tokens, cache_dir
from .folder import ModelFolder

log = logging.getLogger("embedsmith")

# Padded tokens per forward pass: large enough to keep the matrix kernels busy, small enough that
# attention's [batch, heads, seq, seq] scores stay in cache-friendly sizes.
MAX_BATCH_TOKENS = 4096


# Bumped whenever the export itself changes, so a stale cached graph is never reused.
EXPORT_VERSION = 2


def onnx_dir(folder: ModelFolder) -> Path:
    return cache_dir() / "onnx" / f"{folder.digest()[:32]}-v{EXPORT_VERSION}"


def export_onnx(folder: ModelFolder, *, head: str = "embeddings") -> Path:
    """Export the folder's transformer to ONNX (fp32) in the cache; returns the file.

    ``head='embeddings'`` exports token states (``model.onnx``: input_ids, attention_mask ->
    last_hidden_state); ``head='relevance'`` exports a cross-encoder (``reranker.onnx``: input_ids,
    attention_mask, token_type_ids -> logits). Written to a temporary folder and renamed, so a crash never
    leaves a half-written model behind.
    """
    relevance = head == "relevance"
    target = onnx_dir(folder) / ("reranker.onnx" if relevance else "model.onnx")
    if target.is_file():
        return target
    try:
        import torch
        from transformers import AutoModel, AutoModelForSequenceClassification
    except ImportError as exc:
        raise MissingExtraError(
            f"exporting {folder.path.name} to ONNX (first use only)", "torch", "torch"
        ) from exc
    log.warning("exporting %s to ONNX once (cached in %s)", folder.path, target.parent)
    loader = AutoModelForSequenceClassification if relevance else AutoModel
    model = loader.from_pretrained(str(folder.path), local_files_only=True).eval()
    # (forward is wrapped by decorators in transformers 5: read its signature, not its code object)
    has_types = "token_type_ids" in inspect.signature(model.forward).parameters and \
        getattr(model.config, "type_vocab_size", 0) > 0

    class Wrapped(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            kwargs = {"token_type_ids": torch.zeros_like(input_ids)} if has_types else {}
            return self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state

    class WrappedPairs(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    token_type_ids: torch.Tensor) -> torch.Tensor:
            kwargs = {"token_type_ids": token_type_ids} if has_types else {}
            return self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs).logits

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    ids = torch.ones((2, 16), dtype=torch.long)
    mask = torch.ones((2, 16), dtype=torch.long)
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq", min=2, max=folder.max_tokens)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".export-"))
    try:
        shapes = {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}}
        with torch.no_grad(), warnings.catch_warnings(), _quiet_loggers("torch"):
            warnings.simplefilter("ignore")
            if relevance:
                program = torch.onnx.export(
                    WrappedPairs().eval(), (ids, mask, torch.zeros_like(ids)),
                    input_names=["input_ids", "attention_mask", "token_type_ids"], output_names=["logits"],
                    dynamic_shapes={**shapes, "token_type_ids": {0: batch, 1: seq}}, opset_version=18,
                    dynamo=True, verbose=False,
                )
            else:
                program = torch.onnx.export(
                    Wrapped().eval(), (ids, mask), input_names=["input_ids", "attention_mask"],
                    output_names=["last_hidden_state"], dynamic_shapes=shapes, opset_version=18, dynamo=True,
                    verbose=False,
                )
        assert program is not None
        program.save(str(tmp / target.name), external_data=False)
        os.replace(tmp / target.name, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


@contextlib.contextmanager
def _quiet_loggers(*names: str) -> Iterator[None]:
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def quantize_int8(fp32: Path) -> Path:
    """Per-channel dynamic int8 quantisation of the exported model (cached beside it)."""
    target = fp32.with_name(f"{fp32.stem}-int8.onnx")
    if target.is_file():
        return target
    from onnxruntime.quantization import QuantType, quantize_dynamic

    log.warning("quantising %s to int8 (per-channel, dynamic) once", fp32)
    tmp = target.with_name(f".{target.stem}.{os.getpid()}.onnx")
    quantize_dynamic(str(fp32), str(tmp), per_channel=True, weight_type=QuantType.QInt8)
    os.replace(tmp, target)
    return target


def _providers(device: str) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device.startswith("cuda") and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxEncoder(BaseEncoder):
    """A sentence-transformers folder run by onnxruntime.

    Args:
        folder: the model folder.
        name: display name.
        quantize: None for the exact fp32 graph, 'int8' for per-channel dynamic int8 (lossy, faster).
        threads: intra-op threads (default: all cores).
        device: 'cpu' or 'cuda'.
        prompts: overrides the folder's prompts.
    """

    default_batch_size = 32

    def __init__(
        self,
        folder: ModelFolder,
        *,
        name: str,
        quantize: str | None = None,
        threads: int | None = None,
        device: str = "cpu",
        prompts: dict[str, str] | None = None,
    ) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.folder = folder
        self.name = name
        self.dim = folder.dim
        self.max_tokens = folder.max_tokens
        self.prompts = dict(folder.prompts if prompts is None else prompts)
        self.backend = "onnx-int8" if quantize == "int8" else "onnx"
        self.fingerprint = f"{folder.digest()[:16]}:{self.backend}"
        path = export_onnx(folder)
        if quantize == "int8":
            path = quantize_int8(path)
        tok_file = folder.path / "tokenizer.json"
        if not tok_file.is_file():
            raise MissingExtraError(f"{folder.path} has no tokenizer.json; the ONNX backend", "torch")
        self.tokenizer = Tokenizer.from_file(str(tok_file))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.fast_tokenizer = self.tokenizer
        probe = self.tokenizer.encode("a")
        self._tail = len(probe.special_tokens_mask) - 1 - max(
            i for i, s in enumerate(probe.special_tokens_mask) if not s
        )
        self._head = min(i for i, s in enumerate(probe.special_tokens_mask) if not s)
        self._pad_id = self.tokenizer.token_to_id("[PAD]") or self.tokenizer.token_to_id("<pad>") or 0
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or os.cpu_count() or 1
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), opts, providers=_providers(device))
        self._inputs = {i.name for i in self.session.get_inputs()}

    def _tokenize(self, texts: list[str], kind: Kind | None) -> list[list[int]]:
        prompt = self._prompt(kind)
        items = [prompt + t for t in texts] if prompt else texts
        return [e.ids for e in self.tokenizer.encode_batch_fast(items)]

    def _token_lengths(self, texts: list[str], kind: Kind | None) -> list[int]:
        return [len(ids) for ids in self._tokenize(texts, kind)]

    def _embed(self, texts: list[str], kind: Kind | None, batch_size: int, show_progress: bool) -> np.ndarray:
        return self._run(self._tokenize(texts, kind), batch_size, show_progress)

    def embed_counted(self, texts: list[str], *, kind: Kind | None = None, truncation_side: str = "right"
                      ) -> tuple[np.ndarray, list[int]]:
        """As :meth:`BaseEncoder.embed_counted`, tokenizing once; a left cut keeps the leading special and
        prompt tokens and the text's last tokens."""
        ids = self._tokenize(texts, kind)
        keep = self._head + self._prompt_tokens(kind) if truncation_side == "left" else None
        # No TruncationWarning: the caller reports what was cut (a server's usage.truncated_tokens).
        return self._run(ids, self.default_batch_size, False, keep_head=keep, warn=False), [len(x) for x in ids]

    def _prompt_tokens(self, kind: Kind | None) -> int:
        prompt = self._prompt(kind)
        return len(self.tokenizer.encode(prompt, add_special_tokens=False).ids) if prompt else 0

    def _run(self, ids: list[list[int]], batch_size: int, show_progress: bool, *, keep_head: int | None = None,
             warn: bool = True) -> np.ndarray:
        """Encode token ids; a sequence over the limit keeps its start (and closing special tokens), or with
        ``keep_head`` its first ``keep_head`` tokens and its end."""
        if warn:
            self._warn_long([len(x) for x in ids])
        limit, tail = self.max_tokens, self._tail
        if keep_head is None:
            cut = [x if len(x) <= limit else x[: limit - tail] + x[len(x) - tail :] for x in ids]
        else:
            cut = [x if len(x) <= limit else x[:keep_head] + x[len(x) - (limit - keep_head) :] for x in ids]
        clipped = [len(x) for x in cut]
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        batches = list(batches_by_tokens(clipped, batch_size, MAX_BATCH_TOKENS))
        from tqdm.auto import tqdm

        for idx in tqdm(batches, disable=not show_progress, desc=f"encoding ({self.name})", unit="batch"):
            width = clipped[idx[0]]
            input_ids = np.full((len(idx), width), self._pad_id, dtype=np.int64)
            mask = np.zeros((len(idx), width), dtype=np.int64)
            for row, i in enumerate(idx):
                input_ids[row, : clipped[i]] = cut[i]
                mask[row, : clipped[i]] = 1
            feed = {"input_ids": input_ids, "attention_mask": mask}
            hidden = self.session.run(None, {k: v for k, v in feed.items() if k in self._inputs})[0]
            out[idx] = pool(hidden, mask, self.folder.pooling)
        return out


def pool(hidden: np.ndarray, mask: np.ndarray, mode: str) -> np.ndarray:
    """Pool token states [b, s, d] into sentence vectors [b, d] as sentence-transformers does."""
    if mode == "cls":
        return hidden[:, 0].astype(np.float32)
    m = mask[:, :, None].astype(np.float32)
    if mode == "max":
        return np.where(m > 0, hidden, -1e9).max(axis=1).astype(np.float32)
    summed = np.einsum("bsd,bs->bd", hidden, mask.astype(np.float32))
    return (summed / np.maximum(m.sum(axis=1), 1e-9)).astype(np.float32)
