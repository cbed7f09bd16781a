"""embedsmith: turn text into vectors and make them useful, offline first."""

from .encoders import MODELS, TruncationWarning, load_encoder
from .errors import EmbedsmithError, InvalidInputError, MissingExtraError, ModelNotFoundError
from .quantization import Int8Calibration, quantize, truncate_dims
from .similarity import TopK, analogy, pairwise, top_k
from .store import Collection, IndexRebuildWarning, delete_collection, list_collections, open_collection
from .types import Encoder, Hit, Hits, Kind, Metric, Precision

__version__ = "0.1.0"

__all__ = [
    "MODELS",
    "Collection",
    "EmbedsmithError",
    "Encoder",
    "Hit",
    "Hits",
    "IndexRebuildWarning",
    "Int8Calibration",
    "InvalidInputError",
    "Kind",
    "Metric",
    "MissingExtraError",
    "ModelNotFoundError",
    "Precision",
    "TopK",
    "TruncationWarning",
    "analogy",
    "delete_collection",
    "list_collections",
    "load_encoder",
    "open_collection",
    "pairwise",
    "quantize",
    "top_k",
    "truncate_dims",
]
