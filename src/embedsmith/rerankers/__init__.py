"""Rerankers: second-stage scorers of (query, text) pairs."""

from .cross_encoder import Reranker, sigmoid

__all__ = ["Reranker", "sigmoid"]
