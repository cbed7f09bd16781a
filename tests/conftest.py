"""Tests run offline, with model caches in a temporary folder (never the working directory)."""

from __future__ import annotations

import csv
import json
import os
import random
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
# One cache per test session: the ONNX export and the mpnet assembly happen once, inside a temp folder.
os.environ.setdefault("EMBEDSMITH_CACHE", tempfile.mkdtemp(prefix="embedsmith-test-cache-"))

DATA = Path(__file__).parent / "data"
CRAN = DATA / "cranfield"
SEED = ["A cat sits on the mat.", "A feline rests on a rug.", "The stock market fell sharply today."]


def read_stsb(path: Path = DATA / "stsb" / "stsb-en-dev.csv") -> tuple[list[str], list[str], list[float]]:
    a, b, s = [], [], []
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.reader(f):
            a.append(row[0])
            b.append(row[1])
            s.append(float(row[2]))
    return a, b, s


def clustered(n: int, dim: int = 32, centers: int = 20, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centers, dim))
    x = c[rng.integers(0, centers, n)] + 0.3 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture
def vecs() -> np.ndarray:
    """3,000 unit vectors [3000, 32] in 20 clusters."""
    return clustered(3000)


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


# -- PostgreSQL ----------------------------------------------------------------------------------------------
# The server comes from scripts/start-postgres.sh (CI runs it and exports EMBEDSMITH_TEST_PG). Locally the
# PostgreSQL tests skip with the reason when no server answers; with CI=true they fail instead.
PG_ENV = "EMBEDSMITH_TEST_PG"
PG_DSN_FILE = Path(os.environ.get("EMBEDSMITH_PG_DIR", "/var/tmp/embedsmith-pg")) / "dsn"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def pg_server() -> str:
    """DSN of the test PostgreSQL server (with pgvector)."""
    from embedsmith.store.pgvector import mask_dsn

    dsn = os.environ.get(PG_ENV) or (PG_DSN_FILE.read_text().strip() if PG_DSN_FILE.is_file() else "")
    reason = ""
    if not dsn:
        reason = f"no PostgreSQL server: run scripts/start-postgres.sh, or set {PG_ENV}=postgresql://..."
    else:
        try:
            import psycopg

            psycopg.connect(dsn, connect_timeout=3).close()
        except Exception as exc:
            reason = f"PostgreSQL at {mask_dsn(dsn)} is unreachable ({exc}); run scripts/start-postgres.sh"
    if reason:
        if in_ci():
            pytest.fail(f"CI=true runs the PostgreSQL tests, but {reason}")
        pytest.skip(reason)
    return dsn


@contextmanager
def pg_schema(dsn: str) -> Iterator[str]:
    """A store in a fresh schema of the test server, dropped afterwards."""
    import psycopg

    schema = f"test_{uuid.uuid4().hex[:12]}"
    yield f"{dsn}{'&' if '?' in dsn else '?'}schema={schema}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The same contract on both backends: a temporary folder, or a temporary PostgreSQL schema."""
    if request.param == "sqlite":
        yield str(tmp_path)
        return
    with pg_schema(request.getfixturevalue("pg_server")) as s:
        yield s


@pytest.fixture(scope="session")
def tiny_reranker(tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    """A cross-encoder trained here in seconds from MiniLM on Cranfield judgements, each with one random
    document as its negative, by the library's own loop (quality is not the point)."""
    from embedsmith.training import TrainingData, finetune_reranker

    docs = {json.loads(x)["_id"]: json.loads(x)["text"] for x in (CRAN / "corpus.jsonl").read_text().splitlines()}
    queries = {json.loads(x)["_id"]: json.loads(x)["text"] for x in (CRAN / "queries.jsonl").read_text().splitlines()}
    rows = [line.split("\t") for line in (CRAN / "qrels" / "dev.tsv").read_text().splitlines()[1:]]
    rng = random.Random(0)
    data = TrainingData(source="cranfield dev judgements")
    for qid, did, _ in rows[:24]:
        data.add(queries[qid], docs[did], [docs[rng.choice(list(docs))]])
    out = tmp_path_factory.mktemp("reranker")
    finetune_reranker("minilm", data, out, hard_negatives="none", loss="bce", epochs=2, batch_size=8, lr=5e-5,
                      head_lr=5e-5, max_length=128, seed=0, device="cpu")
    return out


@contextmanager
def serving(app: Any, **config: Any) -> Iterator[str]:
    """Run an ASGI app under a real uvicorn server on a free loopback port, in a thread; yields its base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level=config.pop("log_level", "warning"), **config))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()
