"""Context packing for RAG: the best chunks for a query, widened, merged into passages, cited, within a budget.

Stages (each on plain values):

1. **search**: the collection's own search (any mode, filter, reranker) for a pool of chunks.
2. **widen**: the neighbouring chunks (``chunk`` number +-1 of the same document, as ``index_paths`` writes
   them) of the hits that score well (at least ``widen_above`` of the best score) join their document.
3. **merge**: per document, chunks whose offsets overlap or touch become one passage, in document order,
   its text rebuilt from the chunk texts by offset; records without offsets stay passages of their own.
   A passage's score is its best chunk's.
4. **pack**: passages, best first, are taken while they fit the budget (counted in the tokenizer's tokens;
   in markdown the citation lines count too, as they are part of the text); a passage that does not fit is
   skipped for smaller ones, then the hits' own unwidened chunks are tried, and when nothing fits at all the
   best chunk is cut at a space to fit. The result is grouped by document (documents by their best passage) and in
   document order within each, so an LLM reads each source as one piece.

No library we use packs context: LangChain and LlamaIndex concatenate the top chunks, counting characters
or their own token estimates, hence the code.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import InvalidInputError
from .types import Hits

if TYPE_CHECKING:
    from .store.base import Collection

FORMATS = ("markdown", "json")
MAX_BUDGET = 1_000_000


@dataclass(frozen=True)
class Passage:
    """A contiguous piece of one document: ``text`` is ``document[start:end]`` where offsets are known."""

    doc_id: str
    source: str | None
    title: str | None
    start: int | None
    end: int | None
    text: str
    score: float
    chunk_ids: tuple[str, ...] = ()

    def citation(self, number: int) -> str:
        """``[n] title — file#doc@start-end``: short, as every token of it is taken from the budget (the title
        is left out when the passage begins with it; the file is the source's last part)."""
        where = Path(self.source).name if self.source else ""
        ref = f"{where}#{self.doc_id}" if where and where != self.doc_id else self.doc_id
        span = f"@{self.start}-{self.end}" if self.start is not None and self.end is not None else ""
        title = f"{self.title} — " if self.title and not self.text.startswith(self.title) else ""
        return f"[{number}] {title}{ref}{span}"


@dataclass(frozen=True)
class Context:
    """Packed passages, grouped by document, with the tokens they take of the budget."""

    query: str
    budget: int
    tokens: int
    passages: list[Passage] = field(default_factory=list)
    format: str = "markdown"

    def to_markdown(self) -> str:
        return render_markdown(self.passages)

    def to_dict(self) -> dict[str, Any]:
        keys = ("doc_id", "source", "title", "start", "end", "text", "score")
        return {"tokens": self.tokens, "budget": self.budget,
                "passages": [{k: asdict(p)[k] for k in keys} for p in self.passages]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)


def render_markdown(passages: Sequence[Passage]) -> str:
    return "\n\n".join(f"{p.citation(i)}\n{p.text}" for i, p in enumerate(passages, start=1))


def token_counter(tokenizer: Any, collection: Collection) -> Callable[[str], int]:
    """How many tokens a text has: the collection encoder's tokens (no special tokens) by default; a callable
    ``text -> int``; or the name of a tokenizer (a ``tokenizer.json``, a model folder or alias)."""
    if callable(tokenizer):
        def call(text: str) -> int:
            n = tokenizer(text)
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise InvalidInputError(f"the tokenizer returned {n!r} for a text; it must return a count >= 0")
            return n
        return call
    if tokenizer is None:
        return _encoder_tokens(collection.encoder)
    if isinstance(tokenizer, (str, Path)):
        return _named_counter(str(tokenizer))
    raise InvalidInputError(f"tokenizer must be None, a callable or a tokenizer name, got {type(tokenizer).__name__}")


@functools.lru_cache(maxsize=8)
def _named_counter(name: str) -> Callable[[str], int]:
    """A named tokenizer's counter, loaded once per process (a model alias loads its encoder)."""
    from tokenizers import Tokenizer

    path = Path(name).expanduser()
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        from .encoders import load_encoder

        return _encoder_tokens(load_encoder(name))
    tok = Tokenizer.from_file(str(path))
    tok.no_truncation()
    tok.no_padding()
    return lambda text: len(tok.encode(text, add_special_tokens=False).ids) if text else 0


def _encoder_tokens(enc: Any) -> Callable[[str], int]:
    spans = getattr(enc, "token_spans", None)
    if callable(spans):  # our encoders: the model's tokens without special or prompt tokens
        return lambda text: len(spans(text)) if text else 0
    return lambda text: int(enc.count_tokens([text])[0]) if text else 0


def _doc(meta: Mapping[str, Any], rid: str) -> str:
    doc = meta.get("doc_id")
    return str(doc) if doc is not None else rid


def _offsets(meta: Mapping[str, Any], text: str | None) -> tuple[int, int] | None:
    start, end = meta.get("start"), meta.get("end")
    if (isinstance(start, int) and isinstance(end, int) and not isinstance(start, bool) and 0 <= start < end
            and text is not None and len(text) == end - start):
        return start, end
    return None


@dataclass
class _Chunk:
    id: str
    text: str
    meta: dict[str, Any]
    score: float


def merge_passages(chunks: Sequence[_Chunk]) -> list[Passage]:
    """One document's chunks as passages: overlapping or touching offsets merged, in document order."""
    with_span = sorted((c for c in chunks if _offsets(c.meta, c.text)), key=lambda c: (c.meta["start"], c.id))
    out: list[Passage] = []
    group: list[_Chunk] = []

    def close() -> None:
        if not group:
            return
        lo = min(c.meta["start"] for c in group)
        hi = max(c.meta["end"] for c in group)
        buf = [""] * (hi - lo)
        for c in sorted(group, key=lambda c: c.score):  # the best chunk's text last, where they overlap
            buf[c.meta["start"] - lo : c.meta["end"] - lo] = list(c.text)
        best = max(group, key=lambda c: c.score)
        out.append(Passage(_doc(best.meta, best.id), best.meta.get("source"), best.meta.get("title"), lo, hi,
                           "".join(buf), best.score, tuple(c.id for c in group)))
        group.clear()

    for c in with_span:
        if group and c.meta["start"] > max(g.meta["end"] for g in group):
            close()
        group.append(c)
    close()
    for c in chunks:
        if not _offsets(c.meta, c.text):
            out.append(Passage(_doc(c.meta, c.id), c.meta.get("source"), c.meta.get("title"), None, None, c.text,
                               c.score, (c.id,)))
    return out


def _overlaps(p: Passage, chosen: Sequence[Passage]) -> bool:
    return any(q.doc_id == p.doc_id and (p.start is None or q.start is None or q.end is None or p.end is None
                                         or (p.start < q.end and q.start < p.end)) for q in chosen)


def _tokens(passages: Sequence[Passage], count: Callable[[str], int], fmt: str) -> int:
    return count(render_markdown(passages)) if fmt == "markdown" else sum(count(p.text) for p in passages)


def _cut(p: Passage, room: Callable[[Passage], bool]) -> Passage | None:
    """The longest start of ``p`` (cut at a space) that ``room`` accepts, or None."""
    words = [i for i, ch in enumerate(p.text) if ch.isspace()] + [len(p.text)]
    lo, hi, best = 0, len(words) - 1, None
    while lo <= hi:  # binary search over cut points: a token count is monotone in a prefix's length
        mid = (lo + hi) // 2
        end = words[mid]
        trial = Passage(p.doc_id, p.source, p.title, p.start, None if p.start is None else p.start + end,
                        p.text[:end], p.score, p.chunk_ids)
        if end > 0 and room(trial):
            best, lo = trial, mid + 1
        else:
            hi = mid - 1
    return best


def pack(passages: Sequence[Passage], budget: int, count: Callable[[str], int], fmt: str,
         fallback: Sequence[Passage] = ()) -> tuple[list[Passage], int]:
    """The passages that fit ``budget``, best first, then grouped by document and in document order; and the
    tokens they take (of the rendered markdown, or of the texts for json).

    ``fallback`` (the hits' own chunks, unwidened) are tried after ``passages`` where they overlap nothing
    taken; when nothing fits at all, the best one is cut at a space to fit."""
    chosen: list[Passage] = []
    used = 0
    ranked = sorted(passages, key=lambda p: (-p.score, p.doc_id, p.start or 0))
    spare = sorted(fallback, key=lambda p: (-p.score, p.doc_id, p.start or 0))
    for p in [*ranked, *spare]:
        if _overlaps(p, chosen) or used + count(p.text) > budget:  # its text alone no longer fits: skip the render
            continue
        trial = arrange([*chosen, p])
        n = _tokens(trial, count, fmt)
        if n <= budget:
            chosen, used = trial, n
    if not chosen and (spare or ranked):
        cut = _cut((spare or ranked)[0], lambda t: _tokens([t], count, fmt) <= budget)
        if cut is not None:
            chosen, used = [cut], _tokens([cut], count, fmt)
    return chosen, used


def arrange(passages: Sequence[Passage]) -> list[Passage]:
    best: dict[str, float] = {}
    for p in passages:
        best[p.doc_id] = max(best.get(p.doc_id, float("-inf")), p.score)
    return sorted(passages, key=lambda p: (-best[p.doc_id], p.doc_id, p.start if p.start is not None else 0,
                                           -p.score))


def pack_context(collection: Collection, query: str, *, budget_tokens: int = 2000, k: int | None = None,
                 mode: str = "dense", where: Mapping[str, Any] | None = None, rerank: Any = None,
                 tokenizer: Any = None, widen: bool = True, widen_above: float = 0.98,
                 format: str = "markdown") -> Context:
    """The best context for ``query`` within ``budget_tokens`` (see the module docstring).

    Args:
        collection: where to search (records written by ``index_paths`` carry the offsets and chunk numbers
            that widening and merging use; others are packed whole).
        query: the question.
        budget_tokens: the most tokens the context may take.
        k: chunks the search returns before widening (default: max(20, budget_tokens / 40), enough to fill
            the budget with short chunks).
        mode, where, rerank: as :meth:`Collection.search`.
        tokenizer: what counts tokens: None (the collection encoder's), a callable ``text -> int``, or a
            tokenizer name (a ``tokenizer.json`` file, a model folder or alias).
        widen: add the neighbouring chunks of hits that score at least ``widen_above`` of the best.
        format: 'markdown' (citation lines count) or 'json' (only the passages' texts count).

    Raises:
        InvalidInputError: a budget below 1, an unknown format, a bad tokenizer (and what search raises).
    """
    if isinstance(budget_tokens, bool) or not isinstance(budget_tokens, int) or not 0 < budget_tokens <= MAX_BUDGET:
        raise InvalidInputError(f"budget_tokens must be an integer in 1..{MAX_BUDGET}, got {budget_tokens!r}")
    if format not in FORMATS:
        raise InvalidInputError(f"unknown context format {format!r}; expected markdown or json")
    if isinstance(widen_above, bool) or not isinstance(widen_above, (int, float)) or not 0 <= widen_above <= 1:
        raise InvalidInputError(f"widen_above must lie in [0, 1], got {widen_above!r}")
    count = token_counter(tokenizer, collection)
    if k is None:
        k = min(1000, max(20, budget_tokens // 40))
    hits: Hits = collection.search(query, k=k, mode=mode, where=dict(where) if where else None, rerank=rerank)
    chunks: dict[str, _Chunk] = {}
    hit_ids = set(hits.ids)
    for h in hits:
        if h.text:
            chunks[h.id] = _Chunk(h.id, h.text, dict(h.metadata), float(h.score))
    if widen and chunks:
        top = max(c.score for c in chunks.values())
        floor = top * widen_above if top > 0 else top
        wanted: dict[str, float] = {}
        for c in list(chunks.values()):
            n = c.meta.get("chunk")
            doc = c.meta.get("doc_id")
            if c.score < floor or not isinstance(n, int) or isinstance(n, bool) or doc is None:
                continue
            for m in (n - 1, n + 1):
                rid = f"{doc}#{m}"
                if m >= 0 and rid not in chunks:
                    wanted[rid] = max(wanted.get(rid, float("-inf")), c.score)
        for rec in collection.get(list(wanted)) if wanted else []:
            if rec.get("text") and rec["metadata"].get("doc_id") is not None:
                # a neighbour counts as part of its hit's passage: it never outranks the hit
                chunks[rec["id"]] = _Chunk(rec["id"], rec["text"], dict(rec["metadata"]),
                                           min(wanted[rec["id"]], floor))
    by_doc: dict[str, list[_Chunk]] = {}
    for c in chunks.values():
        by_doc.setdefault(_doc(c.meta, c.id), []).append(c)
    passages = [p for group in by_doc.values() for p in merge_passages(group)]
    core: dict[str, list[_Chunk]] = {}
    for c in chunks.values():
        if c.id in hit_ids:
            core.setdefault(_doc(c.meta, c.id), []).append(c)
    fallback = [p for group in core.values() for p in merge_passages(group)]
    chosen, used = pack(passages, budget_tokens, count, format, fallback)
    return Context(query, budget_tokens, used, chosen, format)


__all__ = ["FORMATS", "Context", "Passage", "pack", "pack_context", "render_markdown", "token_counter"]
