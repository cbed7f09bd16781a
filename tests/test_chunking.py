"""Chunking by the encoder's own tokens, on real documents (Cranfield abstracts) and synthetic markdown."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from embedsmith import InvalidInputError
from embedsmith.chunking import chunk_text, model_budget

CRANFIELD = Path(__file__).parent / "data" / "cranfield" / "corpus.jsonl"


def cranfield_docs() -> list[str]:
    rows = [json.loads(line) for line in CRANFIELD.read_text().splitlines()]
    return [f"{r['title']}\n\n{r['text']}" for r in rows]


def test_default_size_is_capped_by_the_model(minilm_onnx):
    assert model_budget(minilm_onnx) == 254  # 256 minus [CLS] and [SEP]
    with pytest.raises(InvalidInputError, match=r"max_tokens=300 exceeds what minilm reads \(254 tokens"):
        chunk_text("some text", encoder=minilm_onnx, max_tokens=300)


def test_no_chunk_over_the_limit_and_offsets_map_back(minilm_onnx):
    docs = cranfield_docs()
    long_docs = [d for d in docs if minilm_onnx.count_tokens([d])[0] > 256]
    assert len(long_docs) >= 20  # the slice holds real documents that MiniLM would truncate
    n_chunks = 0
    for doc in long_docs:
        chunks = chunk_text(doc, encoder=minilm_onnx, source="cran")
        assert len(chunks) >= 2
        for c in chunks:
            assert doc[c.start : c.end] == c.text
            assert minilm_onnx.count_tokens([c.text], kind="document")[0] <= minilm_onnx.max_tokens
            assert c.source == "cran"
        assert [c.index for c in chunks] == list(range(len(chunks)))
        assert chunks[0].start == 0 and chunks[-1].end >= len(doc.rstrip()) - 1
        n_chunks += len(chunks)
    assert n_chunks > len(long_docs)


def test_overlap_is_exact_in_tokens(minilm_onnx):
    doc = max(cranfield_docs(), key=len)
    for size, overlap in ((64, 16), (100, 0), (254, 50)):
        chunks = chunk_text(doc, encoder=minilm_onnx, max_tokens=size, overlap=overlap)
        spans = minilm_onnx.token_spans(doc)
        starts = [a for a, _ in spans]
        for a, b in itertools.pairwise(chunks):
            first_a, last_a = starts.index(a.start), starts.index(a.start) + a.n_tokens
            first_b = starts.index(b.start)
            assert last_a - first_b == overlap, (size, overlap)
            assert a.n_tokens <= size and first_b > first_a


def test_prefers_paragraph_and_sentence_boundaries(minilm_onnx):
    para = "The wing was tested in the tunnel. Lift rose with the angle of attack. " * 6
    doc = "\n\n".join([para.strip()] * 6)
    chunks = chunk_text(doc, encoder=minilm_onnx, max_tokens=120, overlap=0)
    assert len(chunks) > 2
    for c in chunks[:-1]:
        assert c.text.rstrip().endswith(".")  # ends at a sentence, never mid-sentence


def test_markdown_headings_are_boundaries():
    body = "Some words here. " * 40
    md = f"# Intro\n{body}\n## Methods\n{body}\n## Results\nShort.\n"
    chunks = chunk_text(md, unit="chars", max_tokens=300, overlap=20, headings=True)
    titles = [c.title for c in chunks]
    assert titles[0] == "Intro" and "Methods" in titles and titles[-1] == "Results"
    for c in chunks:
        assert md[c.start : c.end] == c.text and len(c.text) <= 300
        # no chunk spans two sections
        assert c.text.count("#") <= 2


def test_character_unit_and_bad_arguments():
    text = "abcdefghij" * 10
    chunks = chunk_text(text, unit="chars", max_tokens=30, overlap=10)
    assert all(len(c.text) <= 30 for c in chunks)
    assert chunks[1].start == chunks[0].end - 10
    assert "".join(c.text[10:] if i else c.text for i, c in enumerate(chunks)) == text
    assert chunk_text("   \n ", unit="chars", max_tokens=5, overlap=0) == []
    with pytest.raises(InvalidInputError, match=r"overlap must be between 0 and max_tokens - 1 \(29\), got 30"):
        chunk_text(text, unit="chars", max_tokens=30, overlap=30)
    with pytest.raises(InvalidInputError, match="needs an encoder"):
        chunk_text(text)
    with pytest.raises(InvalidInputError, match="unit must be"):
        chunk_text(text, unit="words", max_tokens=5)
