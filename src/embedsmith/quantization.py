"""Output precisions and Matryoshka truncation.

Quantisation ranges are fixed (a calibration the caller passes, or the documented default), never taken
from the batch being encoded, so the same text always yields the same code.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InvalidInputError
from .types import Precision, parse_enum


@dataclass(frozen=True)
class Int8Calibration:
    """Per-dimension value ranges mapped onto int8 codes -127..127.

    Attributes:
        low: float32 array of shape [dim], the value mapped to -127.
        high: float32 array of shape [dim], the value mapped to 127.
    """

    low: np.ndarray
    high: np.ndarray

    @classmethod
    def from_vectors(cls, vectors: np.ndarray, *, quantile: float = 0.001) -> Int8Calibration:
        """Calibrate from a representative sample (e.g. a few thousand corpus vectors).

        Args:
            vectors: float array of shape [n, dim], n >= 2.
            quantile: tail mass clipped at each end, to keep outliers from wasting codes.
        """
        v = np.asarray(vectors, dtype=np.float32)
        if v.ndim != 2 or v.shape[0] < 2:
            raise InvalidInputError(f"calibration needs a [n>=2, dim] array, got shape {v.shape}")
        low = np.quantile(v, quantile, axis=0).astype(np.float32)
        high = np.quantile(v, 1 - quantile, axis=0).astype(np.float32)
        return cls(low=low, high=np.maximum(high, low + 1e-6))

    @classmethod
    def default(cls, dim: int) -> Int8Calibration:
        """The default for unit-length vectors: each dimension in [-4/sqrt(dim), 4/sqrt(dim)] (clipped to 1).

        A component of a random unit vector has standard deviation 1/sqrt(dim), so this range spans four
        standard deviations; values beyond it are clipped.
        """
        r = np.float32(min(1.0, 4.0 / np.sqrt(dim)))
        return cls(low=np.full(dim, -r, np.float32), high=np.full(dim, r, np.float32))

    def to_dict(self) -> dict[str, list[float]]:
        return {"low": self.low.tolist(), "high": self.high.tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, list[float]]) -> Int8Calibration:
        return cls(low=np.asarray(data["low"], np.float32), high=np.asarray(data["high"], np.float32))


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """Scale rows to unit length (zero rows stay zero). Returns float32 [n, dim]."""
    v = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return v / np.where(norms == 0, 1, norms)


def truncate_dims(vectors: np.ndarray, dims: int | None, *, normalize: bool = True) -> np.ndarray:
    """Keep the first ``dims`` dimensions (Matryoshka truncation), renormalising when asked.

    Raises:
        InvalidInputError: ``dims`` is not positive or exceeds the vectors' dimension.
    """
    if dims is None:
        return vectors
    full = vectors.shape[1]
    if isinstance(dims, bool) or not isinstance(dims, (int, np.integer)) or dims <= 0:
        raise InvalidInputError(f"dims must be a positive integer, got {dims!r}")
    if dims > full:
        raise InvalidInputError(f"dims={dims} is larger than the model's dimension {full}")
    out = vectors[:, :dims]
    return l2_normalize(out) if normalize else np.ascontiguousarray(out)


def quantize(
    vectors: np.ndarray,
    precision: str | Precision,
    *,
    calibration: Int8Calibration | None = None,
) -> np.ndarray:
    """Convert float vectors to a storage precision.

    Args:
        vectors: float32 array of shape [n, dim].
        precision: float32 | float16 | int8 | binary.
        calibration: int8 ranges; :meth:`Int8Calibration.default` when omitted (meant for unit vectors).

    Returns:
        float32 or float16 [n, dim]; int8 [n, dim]; or for binary, uint8 [n, ceil(dim / 8)] holding
        the sign bits (1 where the value is > 0), packed big-endian as ``numpy.packbits`` does.
    """
    p = parse_enum(Precision, precision, "precision")
    v = np.asarray(vectors, dtype=np.float32)
    if p is Precision.FLOAT32:
        return v
    if p is Precision.FLOAT16:
        return v.astype(np.float16)
    if p is Precision.BINARY:
        return np.packbits(v > 0, axis=1)
    cal = calibration or Int8Calibration.default(v.shape[1])
    if cal.low.shape != (v.shape[1],):
        raise InvalidInputError(
            f"int8 calibration has dimension {cal.low.shape[0]}, vectors have {v.shape[1]}"
        )
    scale = (cal.high - cal.low) / 254.0
    codes = np.rint((v - cal.low) / scale) - 127
    return np.clip(codes, -127, 127).astype(np.int8)


def dequantize_int8(codes: np.ndarray, calibration: Int8Calibration) -> np.ndarray:
    """Map int8 codes back to approximate float32 values [n, dim]."""
    scale = (calibration.high - calibration.low) / 254.0
    return (codes.astype(np.float32) + 127) * scale + calibration.low


def unpack_binary(bits: np.ndarray, dim: int) -> np.ndarray:
    """Unpack binary codes to a float32 array of shape [n, dim] with values -1 and +1."""
    return np.unpackbits(bits, axis=1, count=dim).astype(np.float32) * 2 - 1
