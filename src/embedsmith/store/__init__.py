"""Collections: the embedded store (SQLite plus a derived faiss HNSW index) or PostgreSQL with pgvector.

``api`` opens stores and picks the backend; ``base`` is the contract both backends implement.
"""

from .api import (
    create_like,
    default_store,
    delete_collection,
    is_postgres,
    list_collections,
    migrate_collection,
    open_collection,
    reembed_collection,
    restore_collection,
    snapshot_collection,
)
from .base import Candidate, Collection, RecordBatch, VerifyReport
from .filters import CompiledFilter, compile_where
from .settings import CollectionSettings
from .sqlite import IndexRebuildWarning, IndexSaveWarning, SqliteCollection

__all__ = ["Candidate", "Collection", "CollectionSettings", "CompiledFilter", "IndexRebuildWarning",
           "IndexSaveWarning", "RecordBatch", "SqliteCollection", "VerifyReport", "compile_where", "create_like",
           "default_store", "delete_collection", "is_postgres", "list_collections", "migrate_collection",
           "open_collection", "reembed_collection", "restore_collection", "snapshot_collection"]
