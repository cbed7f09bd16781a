"""The embedded store: SQLite as the source of truth plus a derived faiss HNSW index."""

from .collection import (
    Collection,
    IndexRebuildWarning,
    default_store,
    delete_collection,
    list_collections,
    open_collection,
)
from .filters import compile_where

__all__ = ["Collection", "IndexRebuildWarning", "compile_where", "default_store", "delete_collection",
           "list_collections", "open_collection"]
