"""Encoders: one module per backend, one interface (:class:`embedsmith.types.Encoder`)."""

from .base import BaseEncoder, TruncationWarning
from .cache import VectorCache, VectorCacheWarning, using_cache
from .registry import DEFAULT_MODEL, MODELS, load_encoder

__all__ = ["DEFAULT_MODEL", "MODELS", "BaseEncoder", "TruncationWarning", "VectorCache", "VectorCacheWarning",
           "load_encoder", "using_cache"]
