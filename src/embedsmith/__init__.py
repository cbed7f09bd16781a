"""embedsmith: turn text into vectors and make them useful, offline first."""

from .chunking import chunk_text
from .encoders import MODELS, TruncationWarning, VectorCache, load_encoder
from .errors import (
    ClusterUnreachableError,
    CollectionBusyError,
    CollectionExistsError,
    CollectionNotFoundError,
    EmbedsmithError,
    FileFormatError,
    FilterTooComplexError,
    InvalidInputError,
    MissingExtraError,
    ModelNotFoundError,
    NoTokenVectorsError,
    ResultMismatchError,
    SettingsMismatchError,
    StoreCorruptError,
    StoreError,
    StoreReadOnlyError,
)
from .ingest import IndexReport, index_paths
from .quantization import Int8Calibration, quantize, truncate_dims
from .rerankers import LateInteraction, Reranker
from .similarity import TopK, analogy, pairwise, top_k
from .store import Collection, IndexRebuildWarning, delete_collection, list_collections, open_collection
from .types import Chunk, Encoder, Hit, Hits, Kind, Metric, Precision

__version__ = "0.1.0"

__all__ = [
    "MODELS",
    "Chunk",
    "ClusterUnreachableError",
    "Collection",
    "CollectionBusyError",
    "CollectionExistsError",
    "CollectionNotFoundError",
    "EmbedsmithError",
    "Encoder",
    "FileFormatError",
    "FilterTooComplexError",
    "Hit",
    "Hits",
    "IndexRebuildWarning",
    "IndexReport",
    "Int8Calibration",
    "InvalidInputError",
    "Kind",
    "LateInteraction",
    "Metric",
    "MissingExtraError",
    "ModelNotFoundError",
    "NoTokenVectorsError",
    "Precision",
    "Reranker",
    "ResultMismatchError",
    "SettingsMismatchError",
    "StoreCorruptError",
    "StoreError",
    "StoreReadOnlyError",
    "TopK",
    "TruncationWarning",
    "VectorCache",
    "analogy",
    "chunk_text",
    "delete_collection",
    "index_paths",
    "list_collections",
    "load_encoder",
    "open_collection",
    "pairwise",
    "quantize",
    "top_k",
    "truncate_dims",
]
