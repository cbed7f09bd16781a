"""Which models can be trained, and the bi-encoder that mines negatives, retrieves first-stage candidates and
is scored before and after training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import InvalidInputError


def model_folder(model: str | Path) -> Path:
    """The local folder of an alias (minilm, mpnet) or a path; the multilingual engines cannot be trained.

    Raises:
        InvalidInputError: ``model`` is an alias of a fixed inference engine, or not a model folder.
    """
    from ..encoders.registry import MODELS

    info = MODELS.get(str(model).lower())
    if info is not None:
        if info.folder is None:
            raise InvalidInputError(f"{model} runs on a fixed inference engine and cannot be fine-tuned; "
                                    "fine-tune a sentence-transformers folder (minilm, mpnet or your own)")
        return Path(info.folder())
    p = Path(model).expanduser()
    if not (p / "config.json").is_file():
        raise InvalidInputError(f"model {str(model)!r} is neither an alias nor a sentence-transformers folder")
    return p


def load_bi_encoder(folder: str | Path, device: str) -> Any:
    """A trainable model folder as an embedsmith encoder on torch (the backend training writes for)."""
    from ..encoders import load_encoder

    return load_encoder(str(folder), backend="torch", device=device)
