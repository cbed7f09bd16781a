"""embedsmith: turn text into vectors and make them useful, offline first."""

from .encoders import MODELS, TruncationWarning, load_encoder
from .errors import EmbedsmithError, InvalidInputError, MissingExtraError, ModelNotFoundError
from .quantization import Int8Calibration, quantize, truncate_dims
from .similarity import TopK, analogy, pairwise, top_k
from .types import Encoder, Kind, Metric, Precision

__version__ = "0.1.0"

__all__ = [
    "MODELS",
    "EmbedsmithError",
    "Encoder",
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
    "load_encoder",
    "pairwise",
    "quantize",
    "top_k",
    "truncate_dims",
]
