from __future__ import annotations

import numpy as np
import pytest

from embedsmith import Int8Calibration, InvalidInputError, quantize, truncate_dims
from embedsmith.quantization import dequantize_int8, l2_normalize, unpack_binary

rng = np.random.default_rng(1)
V = l2_normalize(rng.normal(size=(50, 384)))


def test_float16_and_float32():
    assert quantize(V, "float32").dtype == np.float32
    h = quantize(V, "float16")
    assert h.dtype == np.float16
    np.testing.assert_allclose(h.astype(np.float32), V, atol=1e-3)


def test_int8_uses_fixed_ranges_not_the_batch():
    one = quantize(V[:1], "int8")
    many = quantize(V, "int8")
    np.testing.assert_array_equal(one[0], many[0])  # same vector, same code, whatever the batch
    scaled = quantize(V[:1] * 0.5, "int8")
    assert not np.array_equal(scaled, one)  # a batch-derived range would have hidden the scale change


def test_int8_round_trip_keeps_cosine():
    cal = Int8Calibration.default(384)
    back = dequantize_int8(quantize(V, "int8", calibration=cal), cal)
    cos = (l2_normalize(back) * V).sum(1)
    assert cos.min() > 0.99


def test_int8_calibration_from_vectors():
    cal = Int8Calibration.from_vectors(V * 10)
    codes = quantize(V * 10, "int8", calibration=cal)
    assert codes.min() == -127 and codes.max() == 127
    assert Int8Calibration.from_dict(cal.to_dict()).low.tolist() == cal.low.tolist()
    with pytest.raises(InvalidInputError, match="int8 calibration has dimension 384, vectors have 10"):
        quantize(V[:, :10], "int8", calibration=cal)


def test_binary_packs_sign_bits():
    bits = quantize(V, "binary")
    assert bits.dtype == np.uint8 and bits.shape == (50, 48)
    np.testing.assert_array_equal(unpack_binary(bits, 384), np.where(V > 0, 1.0, -1.0))


def test_truncate_dims():
    t = truncate_dims(V, 64)
    assert t.shape == (50, 64)
    np.testing.assert_allclose(np.linalg.norm(t, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(t, l2_normalize(V[:, :64]))
    with pytest.raises(InvalidInputError, match="dims=500 is larger than the model's dimension 384"):
        truncate_dims(V, 500)
    with pytest.raises(InvalidInputError, match="dims must be a positive integer, got 0"):
        truncate_dims(V, 0)


def test_unknown_precision():
    with pytest.raises(InvalidInputError, match="unknown precision 'int4'"):
        quantize(V, "int4")
