"""Rerankers: second-stage scorers of (query, text) pairs."""

from __future__ import annotations

import os
from typing import Any

from .cross_encoder import Reranker, sigmoid
from .late_interaction import LateInteraction, maxsim


def load_reranker(spec: str | os.PathLike[str], **kwargs: Any) -> Any:
    """A second stage by name: ``maxsim`` (late interaction with the collection's own encoder),
    ``maxsim:ENCODER`` (with that encoder, on the fly), or a cross-encoder folder. ``maxsim`` is reserved:
    a folder of that name is given by its absolute path."""
    spec = os.fspath(spec)
    if spec == "maxsim":
        return LateInteraction()
    if spec.startswith("maxsim:"):
        return LateInteraction(spec.split(":", 1)[1], source="on-the-fly")
    return Reranker(spec, **kwargs)


__all__ = ["LateInteraction", "Reranker", "load_reranker", "maxsim", "sigmoid"]
