"""Token-aware chunking: split texts into pieces the encoder reads whole, with exact overlap.

Tokens are counted with the encoder's own tokenizer. A chunk ends at the last paragraph or sentence
boundary that fits (or at a word when none does), the next one starts exactly ``overlap`` tokens before
that end, and no chunk plus the model's special and prompt tokens exceeds the model's maximum.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence

from .errors import InvalidInputError
from .types import Chunk, Encoder

DEFAULT_MAX_TOKENS = 384
_PARAGRAPH = re.compile(r"\n[ \t]*\n\s*")
_SENTENCE = re.compile(r"(?<=[.!?;:])[\"')\]]*\s+")
_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$", re.MULTILINE)


def model_budget(encoder: Encoder, kind: str = "document") -> int:
    """Tokens of text the encoder reads per input once its special and prompt tokens are counted."""
    overhead = encoder.overhead_tokens(kind) if hasattr(encoder, "overhead_tokens") else 2  # [CLS] ... [SEP]
    return int(encoder.max_tokens) - overhead


def encoder_token_spans(encoder: Encoder, text: str) -> list[tuple[int, int]]:
    """Character spans of the encoder's tokens in ``text`` (words and punctuation for plain Protocol encoders)."""
    if hasattr(encoder, "token_spans"):
        return list(encoder.token_spans(text))
    return [m.span() for m in re.finditer(r"\w+|[^\w\s]", text)]


def _boundaries(text: str) -> tuple[list[int], list[int]]:
    """Character offsets where paragraphs and sentences start."""
    paragraphs = [m.end() for m in _PARAGRAPH.finditer(text)]
    sentences = [m.end() for m in _SENTENCE.finditer(text)]
    return paragraphs, sentences


def _sections(text: str, headings: bool) -> list[tuple[int, int, str | None]]:
    """(start, end, heading) spans: the whole text, or one per markdown heading."""
    if not headings:
        return [(0, len(text), None)]
    marks = list(_HEADING.finditer(text))
    if not marks:
        return [(0, len(text), None)]
    spans: list[tuple[int, int, str | None]] = []
    if marks[0].start() > 0 and text[: marks[0].start()].strip():
        spans.append((0, marks[0].start(), None))
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        spans.append((m.start(), end, m.group(2).strip()))
    return spans


def chunk_text(
    text: str,
    *,
    encoder: Encoder | None = None,
    max_tokens: int | None = None,
    overlap: int = 50,
    unit: str = "tokens",
    headings: bool = False,
    source: str | None = None,
    title: str | None = None,
) -> list[Chunk]:
    """Split a text into overlapping chunks that the encoder reads without truncation.

    Args:
        text: the text.
        encoder: counts tokens (required for ``unit='tokens'``).
        max_tokens: chunk size; default ``min(384, what the model reads after special and prompt tokens)``.
            Asking for more than the model reads is an error.
        overlap: tokens (or characters) shared by consecutive chunks, exactly.
        unit: 'tokens' or 'chars' (then ``max_tokens`` and ``overlap`` count characters).
        headings: treat markdown headings as hard boundaries; each chunk gets its heading as ``title``.
        source: recorded on each chunk.
        title: recorded on each chunk (headings override it when ``headings`` is set).

    Returns:
        Chunks in order; ``chunk.text == text[chunk.start:chunk.end]``. Whitespace-only text gives none.
    """
    if not isinstance(text, str):
        raise InvalidInputError(f"text must be a string, got {type(text).__name__}")
    if unit not in ("tokens", "chars"):
        raise InvalidInputError(f"unit must be 'tokens' or 'chars', got {unit!r}")
    if unit == "tokens" and encoder is None:
        raise InvalidInputError("chunking by tokens needs an encoder (or unit='chars')")
    limit: int
    if unit == "tokens":
        assert encoder is not None
        budget = model_budget(encoder)
        limit = min(DEFAULT_MAX_TOKENS, budget) if max_tokens is None else max_tokens
        if limit > budget:
            raise InvalidInputError(
                f"max_tokens={limit} exceeds what {encoder.name} reads ({budget} tokens after special and "
                "prompt tokens)"
            )
    else:
        if max_tokens is None:
            raise InvalidInputError("chunking by characters needs max_tokens (the chunk size in characters)")
        limit = max_tokens
    if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
        raise InvalidInputError(f"max_tokens must be a positive integer, got {limit!r}")
    if isinstance(overlap, bool) or not isinstance(overlap, int) or overlap < 0 or overlap >= limit:
        raise InvalidInputError(f"overlap must be between 0 and max_tokens - 1 ({limit - 1}), got {overlap!r}")

    chunks: list[Chunk] = []
    for s_start, s_end, heading in _sections(text, headings):
        section = text[s_start:s_end]
        if not section.strip():
            continue
        if unit == "tokens":
            assert encoder is not None
            spans = [(a + s_start, b + s_start) for a, b in encoder_token_spans(encoder, section) if b > a]
        else:
            spans = [(i, i + 1) for i in range(s_start, s_end)]
        for start, end, n in _pack(text, spans, limit, overlap, encoder if unit == "tokens" else None):
            piece = text[start:end]
            if piece.strip():
                chunks.append(Chunk(piece, start, end, len(chunks), n, source, heading or title))
    return chunks


def _pack(
    text: str, spans: Sequence[tuple[int, int]], limit: int, overlap: int, encoder: Encoder | None
) -> list[tuple[int, int, int]]:
    """Greedy windows over token spans: (char start, char end, tokens)."""
    if not spans:
        return []
    paragraphs, sentences = _boundaries(text)
    starts = [a for a, _ in spans]

    def first_token_at(chars: list[int]) -> set[int]:
        return {i for c in chars if (i := bisect.bisect_left(starts, c)) < len(starts) and starts[i] == c}

    para_tokens, sent_tokens = first_token_at(paragraphs), first_token_at(sentences)
    out: list[tuple[int, int, int]] = []
    i = 0
    n = len(spans)
    while i < n:
        j = min(n, i + limit)
        if j < n:
            # Prefer ending before a paragraph, then a sentence, if that keeps at least half the window.
            floor = i + max(overlap + 1, limit // 2)
            for marks in (para_tokens, sent_tokens):
                cut = max((t for t in marks if floor <= t <= j), default=None)
                if cut is not None:
                    j = cut
                    break
        while encoder is not None and j > i + 1:
            # Word-approximated tokenizers (no offsets) are checked against the model's own count.
            piece = text[spans[i][0] : spans[j - 1][1]]
            if getattr(encoder, "fast_tokenizer", None) is not None:
                break
            if encoder.count_tokens([piece], kind="document")[0] <= encoder.max_tokens:
                break
            j -= max(1, (j - i) // 10)
        out.append((spans[i][0], spans[j - 1][1], j - i))
        if j >= n:
            break
        i = max(i + 1, j - overlap)
    return out
