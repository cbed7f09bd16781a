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
from typing import Any

import numpy as np

from ..errors import MissingExtraError
from ..types import Kind
from .base import BaseEncoder, batches_by_tokens, cache_dir
from .folder import ModelFolder

log = logging.getLogger("embedsmith")

# Padded tokens per forward pass: large enough to keep the matrix kernels busy, small enough that
# attention's [batch, heads, seq, seq] scores stay in cache-friendly sizes. Measured on the fused graph with
# 400 Cranfield abstracts (benchmarks/README.md, "Long texts"): 1024 gave 10.0k tokens/s, 4096 9.2k, 16384 8.9k.
MAX_BATCH_TOKENS = 1024


# Bumped whenever the export itself changes, so a stale cached graph is never reused. 3: TorchScript export of
# the eager attention, fused by onnxruntime's transformer optimizer.
EXPORT_VERSION = 3


def onnx_dir(folder: ModelFolder) -> Path:
    return cache_dir() / "onnx" / f"{folder.digest()[:32]}-v{EXPORT_VERSION}"


def export_onnx(folder: ModelFolder, *, head: str = "embeddings") -> Path:
    """Export the folder's transformer to ONNX (fp32) in the cache, fused for inference; returns the file.

    ``head='embeddings'`` exports token states (``model.onnx``: input_ids, attention_mask ->
    last_hidden_state); ``head='relevance'`` exports a cross-encoder (``reranker.onnx``: input_ids,
    attention_mask, token_type_ids -> logits).

    The graph comes from the TorchScript exporter over the model's eager attention: that is the pattern
    onnxruntime's transformer optimizer recognises, so each layer becomes one ``Attention`` (or
    ``MultiHeadAttention``) node, ``SkipLayerNormalization`` and ``BiasGelu``; the exported SDPA pattern of
    the dynamo exporter fuses none of them. The fused graph is kept only when it gives the plain graph's
    outputs on a padded probe batch (attention that does not fuse, such as MPNet's relative position bias,
    stays as it was). Written to a temporary folder and renamed, so a crash never leaves a half-written
    model behind.
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
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    log.warning("exporting %s to ONNX once (cached in %s)", folder.path, target.parent)
    loader = AutoModelForSequenceClassification if relevance else AutoModel
    model = loader.from_pretrained(str(folder.path), local_files_only=True, attn_implementation="eager").eval()
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

    ids = torch.ones((2, 16), dtype=torch.long)
    mask = torch.ones((2, 16), dtype=torch.long)
    if relevance:
        module: torch.nn.Module = WrappedPairs().eval()
        args: tuple[torch.Tensor, ...] = (ids, mask, torch.zeros_like(ids))
        inputs, outputs = ["input_ids", "attention_mask", "token_type_ids"], ["logits"]
    else:
        module, args = Wrapped().eval(), (ids, mask)
        inputs, outputs = ["input_ids", "attention_mask"], ["last_hidden_state"]
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".export-"))
    try:
        plain = tmp / "plain.onnx"
        with torch.no_grad(), warnings.catch_warnings(), _quiet_loggers("torch"):
            warnings.simplefilter("ignore")
            try:
                torch.onnx.export(
                    module, args, str(plain), input_names=inputs, output_names=outputs, opset_version=17,
                    dynamic_axes={n: {0: "batch", 1: "seq"} for n in inputs}
                    | {outputs[0]: {0: "batch"} if relevance else {0: "batch", 1: "seq"}},
                    do_constant_folding=True, dynamo=False,
                )
            except Exception as exc:
                log.warning("the TorchScript exporter failed on %s (%s); exporting with dynamo, unfused",
                            folder.path, exc)
                _export_dynamo(module, args, inputs, outputs, folder.max_tokens, plain)
                os.replace(plain, target)
                return target
        fused = _fused(plain, tmp / "fused.onnx", model.config, vocab=int(model.config.vocab_size),
                       relevance=relevance)
        os.replace(fused or plain, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _export_dynamo(module: Any, args: tuple[Any, ...], inputs: list[str], outputs: list[str], max_tokens: int,
                   path: Path) -> None:
    import torch

    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq", min=2, max=max_tokens)
    program = torch.onnx.export(module, args, input_names=inputs, output_names=outputs, opset_version=18,
                                dynamic_shapes={n: {0: batch, 1: seq} for n in inputs}, dynamo=True,
                                verbose=False)
    if program is None:
        raise RuntimeError("torch.onnx.export returned no program")
    program.save(str(path), external_data=False)


def _fused(plain: Path, out: Path, config: Any, *, vocab: int, relevance: bool) -> Path | None:
    """``plain`` fused by onnxruntime's transformer optimizer into ``out``, or None when nothing fused or the
    fused graph's outputs differ from the plain graph's on a padded probe batch."""
    try:
        from onnxruntime.transformers.optimizer import optimize_model
    except ImportError:  # an onnxruntime build without the transformers tools
        return None
    heads, hidden = int(getattr(config, "num_attention_heads", 0)), int(getattr(config, "hidden_size", 0))
    # The optimizer's modules log under their bare names (onnx_model_bert, fusion_attention, ...).
    chatty = [n for n in logging.root.manager.loggerDict if n.startswith(("onnx", "fusion", "optimizer"))]
    with warnings.catch_warnings(), _quiet_loggers(*chatty):
        warnings.simplefilter("ignore")
        try:
            # opt_level 0: only the optimizer's own pattern fusions, offline; the session applies the rest.
            model = optimize_model(str(plain), model_type="bert", num_heads=heads, hidden_size=hidden, opt_level=0)
        except Exception as exc:
            log.warning("onnxruntime's optimizer could not fuse %s: %s", plain, exc)
            return None
        stats = model.get_fused_operator_statistics()
        if not any(stats.get(op) for op in ("Attention", "MultiHeadAttention", "SkipLayerNormalization")):
            return None
        model.save_model_to_file(str(out))
    if not _agree(plain, out, vocab=vocab, relevance=relevance):
        log.warning("the fused graph of %s disagrees with the plain one; keeping the plain graph", plain)
        return None
    log.info("fused %s: %s", plain, {k: v for k, v in stats.items() if v})
    return out


def _agree(a: Path, b: Path, *, vocab: int, relevance: bool, tol: float = 1e-3) -> bool:
    """Whether two graphs give the same outputs (at unpadded positions) on a padded batch of random tokens."""
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    lengths = [37, 12, 5]
    ids = np.zeros((len(lengths), max(lengths)), np.int64)
    mask = np.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, :n] = rng.integers(min(1000, vocab - 1), vocab, n)
        mask[row, :n] = 1
    feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    results = []
    for path in (a, b):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = {i.name for i in session.get_inputs()}
        results.append(session.run(None, {k: v for k, v in feed.items() if k in names})[0])
    x, y = results
    if x.shape != y.shape:
        return False
    if not relevance:
        x, y = x[mask.astype(bool)], y[mask.astype(bool)]
    return bool(np.abs(x - y).max() <= tol)


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
    """Per-channel dynamic int8 quantisation of the exported model (cached beside it).

    On the fused graph every MatMul, each ``Attention`` (as ``QAttention``) and the embedding lookup are
    quantised. The optimizer's contrib ops defeat ONNX shape inference, hence ``DefaultTensorType``.
    """
    target = fp32.with_name(f"{fp32.stem}-int8.onnx")
    if target.is_file():
        return target
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    log.warning("quantising %s to int8 (per-channel, dynamic) once", fp32)
    tmp = target.with_name(f".{target.stem}.{os.getpid()}.onnx")
    with _quiet_loggers("root"):
        quantize_dynamic(str(fp32), str(tmp), per_channel=True, weight_type=QuantType.QInt8,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
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
        # Vectors of another export (or quantisation of it) differ slightly: a cache keeps them apart.
        self.cache_id = f"{self.fingerprint}:export-v{EXPORT_VERSION}"
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
        self.special_tokens = (self._head, self._tail)
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

    def _embed_tokens(self, texts: list[str], kind: Kind | None, batch_size: int, show_progress: bool
                      ) -> tuple[np.ndarray, list[np.ndarray]]:
        states: list[np.ndarray] = [np.zeros(0)] * len(texts)
        return self._run(self._tokenize(texts, kind), batch_size, show_progress, states=states), states

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
             warn: bool = True, states: list[np.ndarray] | None = None) -> np.ndarray:
        """Encode token ids; a sequence over the limit keeps its start (and closing special tokens), or with
        ``keep_head`` its first ``keep_head`` tokens and its end. With ``states``, each text's token states
        [tokens, dim] are put there too."""
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
            if states is not None:
                for row, i in enumerate(idx):
                    states[i] = hidden[row, : clipped[i]].copy()
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
