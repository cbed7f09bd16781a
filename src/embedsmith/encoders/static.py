"""Static embeddings (model2vec): one vector per token, averaged per text; no transformer at run time.

A static model is a table of token vectors distilled from a sentence-transformers teacher: the teacher
encodes every token of its vocabulary once, the vectors are reduced by PCA and weighted (SIF), and a text's
vector is the mean of its tokens' rows. Encoding is a tokenizer call and a sparse product (about 30,000 STSb
sentences/s on 2 cores, 80x MiniLM's ONNX graph) and loses part of the teacher's quality; see README,
"Static encoder".

:func:`distill` makes one (model2vec does the distillation), optionally fitted to a corpus the way model2vec's
tokenlearn does; :class:`StaticEncoder` reads the model2vec folder it writes.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import os
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidInputError, MissingExtraError, ModelNotFoundError
from ..types import Kind
from .base import BaseEncoder, check_texts, file_digest
from .folder import ModelFolder, _read_json

log = logging.getLogger("embedsmith")

STATIC_PREFIX = "static:"
#: What model2vec's ``StaticModel`` reads per text when its config names no ``max_length``.
DEFAULT_MAX_TOKENS = 512
_TEXTS_PER_STEP = 65_536  # texts per sparse product (only the progress bar needs steps)
# model2vec's defaults: SIF weighting a / (a + p(token)) with p from Zipf's law over the vocabulary order,
# and the [unusedN] placeholders of BERT vocabularies dropped.
SIF_COEFFICIENT = 1e-4
_UNUSED_TOKENS = r"\[unused\d+\]"
_MAX_HELD_OUT = 10_000  # texts held out when fitting (10%, at most this many: tokenlearn's cap)


def is_static_folder(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a model2vec folder: its config.json says ``"model_type": "model2vec"``.

    A sentence-transformers folder's config.json names its transformer (``bert``, ``mpnet``, ...) instead.
    """
    p = Path(path)
    return p.is_dir() and _read_json(p / "config.json").get("model_type") == "model2vec"


class StaticEncoder(BaseEncoder):
    """A model2vec folder (``config.json``, ``model.safetensors``, ``tokenizer.json``) run by numpy.

    The folder is read directly (safetensors and tokenizers) rather than through model2vec's
    ``StaticModel.from_pretrained``: that falls back to the Hugging Face Hub for a path that is not a folder
    (embedsmith never touches the network), and it would make the model2vec package a dependency of
    reading a table. Encoding follows ``StaticModel.encode`` exactly: tokens without special tokens, the first
    ``max_tokens`` kept, unknown tokens dropped, the mean of their rows (through the token mapping and weights
    of a vocabulary-quantised model), then unit length; a test compares the two.

    Args:
        path: the folder.
        name: display name (what a collection records; ``load_encoder(name)`` loads it again).

    Raises:
        ModelNotFoundError: the folder is missing or is not a model2vec folder.
        MissingExtraError: safetensors or scipy is not installed (the 'static' extra).
    """

    backend = "static"
    default_batch_size = 1024

    def __init__(self, path: str | os.PathLike[str], *, name: str | None = None) -> None:
        p = Path(path).expanduser()
        if not p.is_dir():
            raise ModelNotFoundError(f"static model folder {str(p)!r} does not exist")
        config = _read_json(p / "config.json")
        weights, tok_file = p / "model.safetensors", p / "tokenizer.json"
        if config.get("model_type") != "model2vec" or not weights.is_file() or not tok_file.is_file():
            raise ModelNotFoundError(
                f"{str(p)!r} is not a model2vec folder (needs config.json with \"model_type\": \"model2vec\", "
                "model.safetensors and tokenizer.json); make one with `embedsmith distill`"
            )
        try:
            import scipy.sparse
            from safetensors.numpy import load_file
        except ImportError as exc:
            raise MissingExtraError("reading a static model", "static", exc.name) from exc
        from tokenizers import Tokenizer

        self._sparse = scipy.sparse
        tensors = load_file(str(weights))
        if "embeddings" not in tensors:
            raise ModelNotFoundError(f"{weights} holds no 'embeddings' tensor (found: {', '.join(tensors)})")
        # float16 on disk (model2vec's default); float32 in memory, where numpy sums it fast.
        self.table = np.ascontiguousarray(tensors["embeddings"], dtype=np.float32)
        self._mapping = tensors.get("mapping")
        self._token_weights = tensors.get("weights")
        if self._token_weights is not None:
            self._token_weights = self._token_weights.astype(np.float32)
        self.tokenizer = Tokenizer.from_file(str(tok_file))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.fast_tokenizer = self.tokenizer
        self._unk_id = _unk_token_id(self.tokenizer)
        self.path = p.resolve()
        self.config = config
        self.name = name or str(p)
        self.dim = int(self.table.shape[1])
        self.vocab_size = int(self.tokenizer.get_vocab_size())
        length = config.get("max_length", DEFAULT_MAX_TOKENS)
        # max_length null means model2vec reads whole texts; a bound is still needed by chunking and the server.
        self.max_tokens = int(length) if length else 1 << 20
        self.prompts = {}
        self.fingerprint = f"{file_digest(weights)[:16]}:{self.backend}"
        teacher = str((config.get("embedsmith") or {}).get("teacher") or config.get("tokenizer_name") or "")
        from .registry import _english_only

        self.english_only = _english_only(Path(teacher).name or p.name) or _english_only(p.name)

    # -- BaseEncoder hooks ---------------------------------------------------------------------------
    def _ids(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch_fast(texts, add_special_tokens=False)]

    def _token_lengths(self, texts: list[str], kind: Kind | None) -> list[int]:
        return [len(ids) for ids in self._ids(texts)]

    def _embed(self, texts: list[str], kind: Kind | None, batch_size: int, show_progress: bool) -> np.ndarray:
        ids = self._ids(texts)
        self._warn_long([len(x) for x in ids])
        return self._pool([x[: self.max_tokens] for x in ids], show_progress)

    def embed_counted(self, texts: list[str], *, kind: Kind | None = None, truncation_side: str = "right"
                      ) -> tuple[np.ndarray, list[int]]:
        """As :meth:`BaseEncoder.embed_counted`, tokenizing once (a static model adds no special tokens)."""
        ids = self._ids(texts)
        limit = self.max_tokens
        cut = [x[-limit:] if truncation_side == "left" else x[:limit] for x in ids]
        return self._pool(cut, False), [len(x) for x in ids]

    def _pool(self, ids: list[list[int]], show_progress: bool) -> np.ndarray:
        """Mean of the rows of each text's known tokens: float32 [n, dim] (zero for a text with none)."""
        n = len(ids)
        out = np.zeros((n, self.dim), np.float32)
        lengths = np.fromiter(map(len, ids), np.int64, n)
        flat = np.fromiter(itertools.chain.from_iterable(ids), np.int64, int(lengths.sum()))
        if self._unk_id is not None:
            known = flat != self._unk_id
            if not known.all():
                bounds = np.concatenate([[0], np.cumsum(lengths)])
                kept = np.concatenate([[0], np.cumsum(known)])
                lengths = kept[bounds[1:]] - kept[bounds[:-1]]
                flat = flat[known]
        empty = int((lengths == 0).sum())
        if empty:
            warnings.warn(f"{empty} of {n} texts have no token in {self.name}'s vocabulary; their vectors are zero",
                          UserWarning, stacklevel=4)
        weights = None if self._token_weights is None else self._token_weights[flat]
        columns = flat if self._mapping is None else self._mapping[flat]
        bounds = np.concatenate([[0], np.cumsum(lengths)])
        from tqdm.auto import tqdm

        # A sparse [texts, vocabulary] matrix of token counts times the table: the sum of each text's rows
        # without gathering them (29k STSb sentences: 0.07 s, against 1.1 s for numpy's gather and reduceat).
        for lo in tqdm(range(0, n, _TEXTS_PER_STEP), disable=not show_progress or n <= _TEXTS_PER_STEP,
                       desc=f"encoding ({self.name})", unit="step"):
            hi = min(n, lo + _TEXTS_PER_STEP)
            a, b = bounds[lo], bounds[hi]
            data = np.ones(b - a, np.float32) if weights is None else weights[a:b]
            counts = self._sparse.csr_matrix((data, columns[a:b], bounds[lo : hi + 1] - a),
                                             shape=(hi - lo, self.table.shape[0]))
            out[lo:hi] = counts @ self.table
        nonempty = lengths > 0
        out[nonempty] /= lengths[nonempty, None]
        return out


def _unk_token_id(tokenizer: Any) -> int | None:
    """The unknown token's id (model2vec drops it from every text), as ``StaticModel`` finds it."""
    unk = getattr(tokenizer.model, "unk_token", None)
    if unk is not None:
        return tokenizer.token_to_id(unk)
    unk_id = json.loads(tokenizer.to_str())["model"].get("unk_id")
    return int(unk_id) if unk_id is not None else None


# ------------------------------------------------------------------------------------------ distillation


@dataclass(frozen=True)
class _Space:
    """The affine map from the teacher's pooled vectors [n, d] to the static model's space [n, k]."""

    mean: np.ndarray  # [d]
    components: np.ndarray  # [k, d]

    def project(self, vectors: np.ndarray) -> np.ndarray:
        return ((vectors - self.mean) @ self.components.T).astype(np.float32)


def _pca(x: np.ndarray, k: int) -> _Space:
    """model2vec's PCA (``distill.inference._pca_fit_transform``): eigenvectors of the covariance, each signed
    so that the largest projection on it is positive. Kept as the map it is, so teacher vectors can be
    projected into the same space when fitting to a corpus."""
    mean = x.mean(axis=0)
    centred = x - mean
    cov = (centred.T @ centred) / (x.shape[0] - 1)
    _, vecs = np.linalg.eigh(cov)
    components = vecs[:, ::-1][:, :k].T
    scores = centred @ components.T
    biggest = np.argmax(np.abs(scores), axis=0)
    signs = np.sign(scores[biggest, range(scores.shape[1])])
    return _Space(mean, components * signs[:, None])


def _sif_weights(n: int) -> np.ndarray:
    """model2vec's ``compute_weights``: a / (a + p) with p from Zipf's law over the vocabulary's order."""
    inv_rank = 1 / np.arange(2, n + 2)
    proba = inv_rank / inv_rank.sum()
    return SIF_COEFFICIENT / (SIF_COEFFICIENT + proba)


def _keep_only(tokens: set[str]) -> str:
    """A regex that matches every token *not* in ``tokens`` (model2vec's ``token_remove_pattern``).

    Built as a trie: an alternation of thousands of literals takes Python's ``re`` tens of seconds over a
    30k-token vocabulary, the trie a fraction of one.
    """
    trie: dict[str, Any] = {}
    for token in tokens:
        node = trie
        for ch in token:
            node = node.setdefault(ch, {})
        node[""] = {}

    def pattern(node: dict[str, Any]) -> str:
        ends = "" in node
        branches = [re.escape(ch) + pattern(child) for ch, child in sorted(node.items()) if ch]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 and not ends else "(?:" + "|".join(branches) + ")"
        return body + "?" if ends else body

    return r"(?!(?:" + pattern(trie) + r")\Z)"


def _teacher_folder(model: str | os.PathLike[str]) -> ModelFolder:
    from .registry import MODELS

    key = str(model)
    info = MODELS.get(key.lower())
    if info is not None:
        if info.folder is None:
            raise InvalidInputError(f"{info.alias} is not a sentence-transformers model; distil a model folder "
                                    f"or one of: {', '.join(a for a, m in MODELS.items() if m.folder)}")
        return ModelFolder.open(info.folder())
    path = Path(key).expanduser()
    if not path.exists():
        raise ModelNotFoundError(f"unknown model {key!r}: not an alias ({', '.join(MODELS)}) and not an existing "
                                 "folder; distil a sentence-transformers folder by passing its path")
    if is_static_folder(path):
        raise InvalidInputError(f"{key} is already a static model; distil its sentence-transformers teacher")
    return ModelFolder.open(path)


def _check_output(output: Path) -> None:
    """Refuse, before any work, an output that exists with content or that cannot be created."""
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise InvalidInputError(f"output {str(output)!r} exists and is not an empty folder; name a new one")
    parent = output.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise InvalidInputError(f"output {str(output)!r} cannot be created: {str(parent)!r} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InvalidInputError(f"output {str(output)!r} cannot be created: {str(parent)!r} is not writable")


def _positive(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InvalidInputError(f"{name} must be a positive integer, got {value!r}")


def distill(
    model: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    pca_dims: int | None = 256,
    vocabulary: Sequence[str] | None = None,
    restrict_to: Sequence[str] | None = None,
    corpus: Sequence[str] | None = None,
    epochs: int = 50,
    patience: int = 3,
    batch_size: int = 256,
    learning_rate: float = 1e-2,
    seed: int = 42,
    show_progress: bool = False,
) -> Path:
    """Distil a static model from a sentence-transformers teacher into a model2vec folder, offline.

    model2vec runs the teacher (torch) once over every token of its vocabulary, one token per pass: for
    MiniLM's 30k tokens about 10 s on 2 CPU cores, plus a few seconds of imports. Its vectors are then reduced
    by PCA and SIF-weighted as model2vec does (the PCA is computed here so the same map can project the
    teacher's vectors when fitting).

    With ``corpus``, the table is then fitted to the corpus as model2vec's tokenlearn does: the teacher
    (embedsmith's ONNX encoder) encodes every text, and the rows are trained (Adam, torch) so that the mean
    of a text's rows, the static model's own pooling, points where the teacher's vector points after the same
    projection (the loss is the cosine distance; tokenlearn adds a linear head that is discarded at
    inference, here what is trained is what is saved). 10% of the texts are held out: training stops when
    their distance has not improved for ``patience`` epochs, and the best table is kept. The teacher's
    encoding dominates the cost (MiniLM ONNX on 2 cores: Cranfield's 1,400 abstracts took 30 s); training
    takes seconds. Seeded: the same inputs give the same model. Only the rows of the
    corpus's tokens move, so words it lacks keep their distilled vectors.

    Args:
        model: the teacher: an alias (``minilm``, ``mpnet``) or a sentence-transformers folder.
        output: the folder to write (new, or empty).
        pca_dims: dimensions kept by PCA (None keeps the teacher's, uncentred, as model2vec does).
        vocabulary: words to add to the teacher's tokens (model2vec's ``vocabulary``: each becomes one token,
            its vector the teacher's vector of the word).
        restrict_to: keep only the teacher's tokens that these texts use (and its special tokens). A small
            model that distils in a few seconds and tokenizes these texts exactly as the full vocabulary does
            (PCA and SIF weights are computed over the kept tokens, so vectors are close to, not equal to, the
            full model's); a word of another text made of other tokens is unknown and ignored. For a closed
            domain, or tests.
        corpus: texts to fit the table to (at least 10).
        epochs: most passes over the corpus.
        patience: epochs without a better held-out distance before stopping.
        batch_size: texts per step.
        learning_rate: Adam's step size.
        seed: seeds the held-out split, the order of the texts and torch.
        show_progress: show progress bars (the distillation's and the teacher's encoding).

    Returns:
        ``output``. Its config.json records, under ``embedsmith``, the teacher and the fit's held-out cosine
        distance to the teacher before and after.

    Raises:
        ModelNotFoundError: unknown alias or missing folder.
        InvalidInputError: a bad ``pca_dims`` or training setting, an empty text, an existing non-empty or
            unwritable ``output``, a corpus of fewer than 10 texts.
        MissingExtraError: model2vec or torch is not installed (the 'static' and 'torch' extras).
    """
    out = Path(output).expanduser()
    if pca_dims is not None:
        _positive(pca_dims, "pca_dims")
    for value, name in ((epochs, "epochs"), (patience, "patience"), (batch_size, "batch_size")):
        _positive(value, name)
    if isinstance(learning_rate, bool) or not isinstance(learning_rate, int | float) or not learning_rate > 0:
        raise InvalidInputError(f"learning_rate must be a positive number, got {learning_rate!r}")
    words = check_texts(vocabulary) if vocabulary is not None else None
    subset = check_texts(restrict_to) if restrict_to is not None else None
    texts = list(dict.fromkeys(check_texts(corpus))) if corpus is not None else None
    if subset is not None and not subset:
        raise InvalidInputError("restrict_to is empty; pass the texts whose tokens to keep, or None")
    if texts is not None and len(texts) < 10:
        raise InvalidInputError(f"corpus holds {len(texts)} distinct texts; fitting needs at least 10")
    _check_output(out)
    folder = _teacher_folder(model)
    if pca_dims is not None and pca_dims > folder.dim:
        raise InvalidInputError(f"pca_dims={pca_dims} exceeds {model}'s dimension {folder.dim}")
    try:
        from model2vec import StaticModel
        from model2vec.distill import distill as m2v_distill
    except ImportError as exc:
        raise MissingExtraError("distilling a static model", "static", "model2vec") from exc
    except Exception as exc:  # model2vec.distill checks its own extras (torch, transformers, skeletoken)
        raise MissingExtraError(f"distilling a static model ({exc})", "static") from exc

    started = time.perf_counter()
    pattern = _UNUSED_TOKENS
    if subset is not None:
        pattern = _keep_only(_tokens_of(folder, subset, words or []))
    raw = _run_distillation(m2v_distill, folder, words, pattern, show_progress)
    rows = np.asarray(raw.embedding, np.float32)
    if pca_dims is not None and pca_dims >= rows.shape[0]:
        raise InvalidInputError(f"pca_dims={pca_dims} needs a vocabulary of more than {pca_dims} tokens; "
                                f"this one has {rows.shape[0]} (restrict_to more texts, or lower pca_dims)")
    space = _pca(rows, pca_dims) if pca_dims is not None else _Space(np.zeros(rows.shape[1], np.float32),
                                                                      np.eye(rows.shape[1], dtype=np.float32))
    table = space.project(rows) * _sif_weights(len(rows))[:, None].astype(np.float32)
    fit: dict[str, Any] | None = None
    if texts is not None:
        table, fit = _fit(table, raw.tokenizer, texts, model, space, epochs=epochs, patience=patience,
                          batch_size=batch_size, learning_rate=learning_rate, seed=seed,
                          show_progress=show_progress)
    config = dict(raw.config)
    config.update({
        "apply_pca": pca_dims, "sif_coefficient": SIF_COEFFICIENT, "hidden_dim": int(table.shape[1]),
        "tokenizer_name": folder.path.name,
        "embedsmith": {"teacher": str(model), "restricted": subset is not None, "fit": fit,
                       "seconds": round(time.perf_counter() - started, 1)},
    })
    static = StaticModel(vectors=table.astype(np.float16), tokenizer=raw.tokenizer, config=config,
                         normalize=True, base_model_name=folder.path.name)
    _save(static, out)
    return out


def _tokens_of(folder: ModelFolder, texts: list[str], words: list[str]) -> set[str]:
    """The teacher's tokens that ``texts`` use, its special tokens, and the added ``words`` as model2vec
    normalises them (the pattern must not remove them either)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder.path / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    keep = {a.content for a in tok.get_added_tokens_decoder().values()}
    keep.update(tok.normalizer.normalize_str(w).strip() if tok.normalizer else w.strip() for w in words)
    for e in tok.encode_batch_fast(texts, add_special_tokens=False):
        keep.update(t for i in e.ids if (t := tok.id_to_token(i)) is not None)
    return keep


def _run_distillation(m2v_distill: Any, folder: ModelFolder, words: list[str] | None, pattern: str,
                      show_progress: bool) -> Any:
    """model2vec's distillation without PCA or weighting (done by the caller), quietly unless asked."""
    import model2vec.distill.inference as m2v_inference
    from transformers.utils import logging as hf_logging

    from .onnx import _quiet_loggers

    hf_logging.disable_progress_bar()
    pooling = "first" if folder.pooling == "cls" else "mean"  # the token vectors pooled as the teacher pools
    # model2vec's "Encoding tokens" bar takes no switch (and tqdm reads TQDM_DISABLE only at import).
    bar = m2v_inference.tqdm
    m2v_inference.tqdm = functools.partial(bar, disable=not show_progress)
    try:
        with warnings.catch_warnings(), _quiet_loggers("model2vec", "transformers", "skeletoken"):
            warnings.simplefilter("ignore")
            return m2v_distill(model_name=str(folder.path), vocabulary=words, pca_dims=None, sif_coefficient=None,
                               token_remove_pattern=pattern, quantize_to="float32", pooling=pooling, device="cpu")
    finally:
        m2v_inference.tqdm = bar


def _fit(table: np.ndarray, tokenizer: Any, texts: list[str], model: str | os.PathLike[str], space: _Space, *,
         epochs: int, patience: int, batch_size: int, learning_rate: float, seed: int, show_progress: bool
         ) -> tuple[np.ndarray, dict[str, Any]]:
    """Train the rows of ``table`` [v, k] so each text's mean row follows the teacher's projected vector."""
    from .registry import load_encoder

    teacher = load_encoder(model, backend="onnx")
    # The teacher reads only its first max_tokens (special tokens included): the student is fitted on as much.
    reads = teacher.max_tokens - teacher.overhead_tokens()
    unk = _unk_token_id(tokenizer)
    ids = [[i for i in e.ids[:reads] if i != unk]
           for e in tokenizer.encode_batch_fast(texts, add_special_tokens=False)]
    known = [i for i, x in enumerate(ids) if x]
    if len(known) < 10:
        raise InvalidInputError(f"only {len(known)} corpus texts have a token in the model's vocabulary; "
                                "fitting needs at least 10")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # truncation is expected: the student is cut to match
        target = space.project(teacher.encode([texts[i] for i in known], normalize=False,
                                              show_progress=show_progress))
    ids = [ids[i] for i in known]
    return _train_rows(table, ids, target, epochs=epochs, patience=patience, batch_size=batch_size,
                       learning_rate=learning_rate, seed=seed)


def _train_rows(table: np.ndarray, ids: list[list[int]], target: np.ndarray, *, epochs: int, patience: int,
                batch_size: int, learning_rate: float, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Adam on ``1 - cos(mean of a text's rows, its target)``; 10% held out for early stopping."""
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(seed)
    order = rng.permutation(len(ids))
    n_val = min(_MAX_HELD_OUT, max(1, round(0.1 * len(ids))))
    val, train = order[:n_val], order[n_val:]
    torch.manual_seed(seed)
    weight = torch.nn.Parameter(torch.from_numpy(table.astype(np.float32)))
    optimizer = torch.optim.Adam([weight], lr=learning_rate)
    targets = torch.from_numpy(target)

    def batch(idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        flat = torch.tensor([t for i in idx for t in ids[i]], dtype=torch.long)
        offsets = torch.tensor(np.concatenate([[0], np.cumsum([len(ids[i]) for i in idx])[:-1]]), dtype=torch.long)
        return flat, offsets, targets[torch.from_numpy(idx)]

    def distance(idx: np.ndarray) -> torch.Tensor:
        flat, offsets, y = batch(idx)
        pooled = F.embedding_bag(flat, weight, offsets, mode="mean")
        return 1 - F.cosine_similarity(pooled, y, dim=1).mean()

    def held_out() -> float:
        with torch.no_grad():
            parts = [(float(distance(val[lo : lo + 4096])), len(val[lo : lo + 4096]))
                     for lo in range(0, len(val), 4096)]
        return sum(d * n for d, n in parts) / len(val)

    before = best = held_out()
    best_table = table
    waited, ran = 0, 0
    for _ in range(epochs):
        ran += 1
        shuffled = train[rng.permutation(len(train))]
        for lo in range(0, len(shuffled), batch_size):
            optimizer.zero_grad()
            loss = distance(shuffled[lo : lo + batch_size])
            loss.backward()
            optimizer.step()
        now = held_out()
        if now < best - 1e-5:
            best, best_table, waited = now, weight.detach().numpy().copy(), 0
        else:
            waited += 1
            if waited >= patience:
                break
    log.debug("fitted to %d texts: held-out cosine distance to the teacher %.4f -> %.4f in %d epochs",
             len(ids), before, best, ran)
    return best_table, {"texts": len(ids), "held_out": int(n_val), "epochs": ran,
                        "held_out_distance_before": round(before, 6), "held_out_distance_after": round(best, 6)}


def _save(static: Any, out: Path) -> None:
    """model2vec's own save (its folder layout and model card), into a temporary folder renamed to ``out``:
    an interrupted run never leaves a half-written model."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    try:
        with _quiet(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            static.save_pretrained(tmp)
        if out.is_dir():
            out.rmdir()  # checked empty before the work began
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _quiet() -> Any:
    from .onnx import _quiet_loggers

    return _quiet_loggers("model2vec")


__all__ = ["STATIC_PREFIX", "StaticEncoder", "distill", "is_static_folder"]
