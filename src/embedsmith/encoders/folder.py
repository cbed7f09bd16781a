"""Reading a sentence-transformers model folder without importing sentence-transformers."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ModelNotFoundError
from .base import file_digest

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


@dataclass(frozen=True)
class ModelFolder:
    """The facts embedsmith needs from a sentence-transformers folder.

    Attributes:
        path: the folder.
        dim: output dimension (after pooling).
        max_tokens: the model's max sequence length (sentence-transformers' ``max_seq_length``).
        pooling: 'mean', 'cls' or 'max'.
        prompts: prompt per kind from ``config_sentence_transformers.json``.
        weights: the weights file.
    """

    path: Path
    dim: int
    max_tokens: int
    pooling: str
    weights: Path
    prompts: dict[str, str] = field(default_factory=dict)
    num_heads: int = 0

    @classmethod
    def open(cls, path: str | Path) -> ModelFolder:
        """Read a folder, failing with a clear message when it is not a usable model."""
        p = Path(path).expanduser()
        if not p.is_dir():
            raise ModelNotFoundError(f"model folder {str(p)!r} does not exist")
        weights = next((p / w for w in _WEIGHT_FILES if (p / w).is_file()), None)
        config = _read_json(p / "config.json")
        if weights is None or not config:
            raise ModelNotFoundError(
                f"{str(p)!r} is not a transformers model folder (needs config.json and one of {_WEIGHT_FILES})"
            )
        st = _read_json(p / "sentence_bert_config.json")
        max_tokens = int(st.get("max_seq_length") or config.get("max_position_embeddings", 512))
        if config.get("model_type") in ("roberta", "xlm-roberta", "mpnet", "camembert"):
            # These reserve two positions for the padding offset; ST's own configs respect that.
            max_tokens = min(max_tokens, int(config.get("max_position_embeddings", 514)) - 2)
        pooling = "mean"
        for mod in json.loads((p / "modules.json").read_text()) if (p / "modules.json").is_file() else []:
            if mod.get("type", "").endswith("Pooling"):
                pc = _read_json(p / mod.get("path", "") / "config.json")
                if pc.get("pooling_mode_cls_token"):
                    pooling = "cls"
                elif pc.get("pooling_mode_max_tokens"):
                    pooling = "max"
                elif pc.get("pooling_mode") in ("cls", "max", "mean"):
                    pooling = pc["pooling_mode"]
        prompts = _read_json(p / "config_sentence_transformers.json").get("prompts") or {}
        prompts = {("document" if k in ("passage", "corpus") else k): v for k, v in prompts.items() if v}
        return cls(
            path=p.resolve(),
            dim=int(config.get("hidden_size") or config.get("d_model") or 0),
            max_tokens=max_tokens,
            pooling=pooling,
            weights=weights,
            prompts=prompts,
            num_heads=int(config.get("num_attention_heads", 0)),
        )

    def digest(self) -> str:
        """sha256 of the weights file (cached per path, size and mtime)."""
        return file_digest(self.weights)
