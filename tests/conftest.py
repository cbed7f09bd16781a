"""Tests run offline, with model caches in a temporary folder (never the working directory)."""

from __future__ import annotations

import csv
import os
import tempfile
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
# One cache per test session: the ONNX export and the mpnet assembly happen once, inside a temp folder.
os.environ.setdefault("EMBEDSMITH_CACHE", tempfile.mkdtemp(prefix="embedsmith-test-cache-"))

DATA = Path(__file__).parent / "data"
SEED = ["A cat sits on the mat.", "A feline rests on a rug.", "The stock market fell sharply today."]


def read_stsb(path: Path = DATA / "stsb" / "stsb-en-dev.csv") -> tuple[list[str], list[str], list[float]]:
    a, b, s = [], [], []
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.reader(f):
            a.append(row[0])
            b.append(row[1])
            s.append(float(row[2]))
    return a, b, s


@pytest.fixture(scope="session")
def stsb() -> tuple[list[str], list[str], list[float]]:
    return read_stsb()


@pytest.fixture(scope="session")
def minilm_onnx():  # type: ignore[no-untyped-def]
    from embedsmith import load_encoder

    return load_encoder("minilm", backend="onnx", device="cpu")


@pytest.fixture(scope="session")
def minilm_torch():  # type: ignore[no-untyped-def]
    from embedsmith import load_encoder

    return load_encoder("minilm", backend="torch", device="cpu")
