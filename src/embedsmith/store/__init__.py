"""Collections: the embedded store (SQLite plus a derived faiss HNSW index) or PostgreSQL with pgvector."""

from .collection import (
    Collection,
    create_like,
    default_store,
    delete_collection,
    is_postgres,
    list_collections,
    migrate_collection,
    open_collection,
)
from .filters import compile_where
from .sqlite import IndexRebuildWarning, SqliteCollection

__all__ = ["Collection", "IndexRebuildWarning", "SqliteCollection", "compile_where", "create_like", "default_store",
           "delete_collection", "is_postgres", "list_collections", "migrate_collection", "open_collection"]
