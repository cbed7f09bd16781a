"""From files to chunks in a collection: read, chunk by the encoder's tokens, embed, store.

Each file's chunks carry ``source`` (the path), ``doc_id``, ``chunk`` (number), ``start``/``end``
(character offsets in the document text), ``title`` and ``doc_hash`` (sha256 of the file). Re-indexing
skips a file whose hash is unchanged and replaces the chunks of a changed one in a single transaction;
``prune`` removes the chunks of files that are gone. Unreadable files are skipped with a warning and
counted, never abort the run.
"""

from __future__ import annotations

import hashlib
import html.parser
import io
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .chunking import DEFAULT_MAX_TOKENS, chunk_text, encoder_token_spans, model_budget
from .encoders.cache import VectorCache, using_cache
from .errors import FileFormatError, InvalidInputError
from .io import decode_text, parse_jsonl, parse_table

if TYPE_CHECKING:
    from .store import Collection
    from .types import Encoder

TEXT_SUFFIXES = {".txt", ".md", ".markdown", ".rst"}
SUPPORTED = TEXT_SUFFIXES | {".html", ".htm", ".pdf", ".jsonl", ".csv"}


class SkippedFileWarning(UserWarning):
    """A file could not be read and was skipped."""


class UnreadableFileError(Exception):
    """Internal: why a file was skipped."""


@dataclass(frozen=True)
class Document:
    """A text to chunk, with where it came from."""

    id: str
    text: str
    source: str
    title: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    line: int | None = None  # the row's line in a JSONL or CSV file


@dataclass
class IndexReport:
    """What ``index_paths`` did."""

    files_indexed: int = 0
    files_unchanged: int = 0
    files_skipped: list[tuple[str, str]] = field(default_factory=list)
    documents: int = 0
    chunks: int = 0
    files_pruned: int = 0
    #: chunks whose vectors came from the vector cache (unchanged chunks of changed files, re-indexing)
    chunks_cached: int = 0
    #: documents of a Ray dataset of rows whose stored hash was unchanged (not encoded again)
    documents_unchanged: int = 0

    def summary(self) -> str:
        cached = f", {self.chunks_cached} from the vector cache" if self.chunks_cached else ""
        if self.files_indexed or self.files_unchanged or not (self.documents or self.documents_unchanged):
            parts = [f"{self.files_indexed} file(s) indexed ({self.documents} documents, {self.chunks} chunks"
                     f"{cached})", f"{self.files_unchanged} unchanged"]
        else:  # a dataset of document rows
            parts = [f"{self.documents} document(s) indexed ({self.chunks} chunks{cached})",
                     f"{self.documents_unchanged} unchanged"]
        if self.files_pruned:
            parts.append(f"{self.files_pruned} removed file(s) pruned")
        parts.append(f"{len(self.files_skipped)} skipped")
        return ", ".join(parts)


class _HTMLText(html.parser.HTMLParser):
    _SKIP = frozenset({"script", "style", "noscript", "template", "head"})
    _BLOCK = frozenset({"p", "div", "br", "li", "h1", "h2", "h3", "h4", "h5", "h6", "tr", "section", "article",
                        "pre"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title: str | None = None
        self._skip = 0
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self._in_title = True
        if tag in self._SKIP:
            self._skip += 1
        if tag in self._BLOCK:
            self.parts.append("\n\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        if tag in self._SKIP and self._skip:
            self._skip -= 1
        if tag in self._BLOCK:
            self.parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title = (self.title or "") + data.strip()
        elif not self._skip:
            self.parts.append(data)


def html_to_text(markup: str) -> tuple[str, str | None]:
    """Visible text of an HTML page (paragraphs kept as blank lines) and its <title>."""
    parser = _HTMLText()
    parser.feed(markup)
    text = "".join(parser.parts)
    lines = [" ".join(line.split()) for line in text.split("\n")]
    out = "\n".join(lines)
    while "\n\n\n" in out:
        out = out.replace("\n\n\n", "\n\n")
    return out.strip(), parser.title


def read_documents(
    path: Path, raw: bytes, *, text_field: str = "text", id_field: str | None = None, title_field: str = "title"
) -> list[Document]:
    """Documents in one file. JSONL/CSV: one per row (``_id``/``id``, ``title`` + ``text``, BEIR layout).

    Raises:
        UnreadableFileError: binary, undecodable or malformed content (the reason says which).
    """
    suffix = path.suffix.lower()
    source = str(path)
    if suffix == ".pdf":
        try:
            from pypdf import PdfReader
        except ImportError:
            raise UnreadableFileError(
                "PDF support needs the 'ingest' extra: pip install 'embedsmith[ingest]'"
            ) from None
        try:
            reader = PdfReader(io.BytesIO(raw))
            text = "\n\n".join((page.extract_text() or "") for page in reader.pages)
            title = (reader.metadata.title if reader.metadata else None) or None
        except Exception as exc:  # pypdf raises many types for damaged files
            raise UnreadableFileError(f"unreadable PDF: {exc}") from None
        return [Document(source, text, source, title)] if text.strip() else []
    try:
        text = decode_text(raw, path)
        if suffix in (".html", ".htm"):
            body, title = html_to_text(text)
            return [Document(source, body, source, title)] if body else []
        if suffix in TEXT_SUFFIXES:
            return [Document(source, text, source, None)] if text.strip() else []
        rows: list[tuple[int, dict[str, Any]]]
        if suffix == ".jsonl":
            rows = list(parse_jsonl(text, path))
        elif suffix == ".csv":
            table = parse_table(text, path, delimiter=",")
            if text_field not in table.columns and title_field not in table.columns:
                listed = ", ".join(map(repr, table.columns)) or "none"
                raise UnreadableFileError(f"no {text_field!r} column (columns: {listed}); pass --text-field")
            rows = list(table.rows)
        else:
            raise UnreadableFileError(f"unsupported file type {suffix or '(none)'}")
    except FileFormatError as exc:  # the file is named beside the reason in the report
        raise UnreadableFileError(exc.detail if exc.line is None else f"line {exc.line}: {exc.detail}") from None
    docs = []
    seen: dict[str, int] = {}
    for n, row in rows:
        body = str(row.get(text_field) or "")
        title = str(row.get(title_field) or "") or None
        if not body.strip() and not title:
            continue
        rid = row.get(id_field) if id_field else row.get("_id", row.get("id"))
        extra = {k: v for k, v in (row.get("metadata") or {}).items()} if isinstance(row.get("metadata"), dict) else {}
        doc_id = str(rid) if rid not in (None, "") else f"{source}:{n}"
        if doc_id in seen:
            raise UnreadableFileError(f"id {doc_id!r} appears twice, on lines {seen[doc_id]} and {n}")
        seen[doc_id] = n
        docs.append(Document(doc_id, body, source, title, extra, n))
    if suffix == ".jsonl" and not docs and seen == {} and text.strip():
        raise UnreadableFileError(f"no row has a {text_field!r} (or {title_field!r}) field; pass --text-field")
    return docs


def walk(paths: Sequence[str | Path]) -> list[Path]:
    """Supported files under the given files and folders, sorted; a missing path is an error."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in SUPPORTED
                            and not any(part.startswith(".") for part in f.relative_to(p).parts))
        elif p.is_file():
            files.append(p)
        else:
            raise InvalidInputError(f"path {str(p)!r} does not exist")
    return list(dict.fromkeys(files))


def document_chunks(
    doc: Document, collection: Collection, *, max_tokens: int | None, overlap: int, headings: bool
) -> list[dict[str, Any]]:
    """Records (id, text, metadata) for one document's chunks.

    The title leads the first chunk's text. Later chunks are embedded and bm25-indexed with the title in
    front (``index_text``) so that they keep their document's context; their stored text stays the exact
    slice of the document, and chunks are sized so that title plus chunk fit the model.
    """
    return chunk_records(doc, collection.encoder, max_tokens=max_tokens, overlap=overlap, headings=headings)


def chunk_records(
    doc: Document, enc: Encoder, *, max_tokens: int | None, overlap: int, headings: bool
) -> list[dict[str, Any]]:
    """:func:`document_chunks` with the encoder itself (Ray actors hold an encoder, not a collection)."""
    text = f"{doc.title}\n\n{doc.text}" if doc.title and doc.text.strip() else (doc.text or doc.title or "")
    limit = max_tokens
    title_tokens = len(encoder_token_spans(enc, doc.title)) if doc.title and doc.text.strip() else 0
    if title_tokens:
        budget = model_budget(enc)
        room = min(max_tokens or DEFAULT_MAX_TOKENS, budget) - title_tokens - 2
        # A title too long to share the window is left out of the later chunks' embedding.
        limit = room if room > max(overlap, 32) else max_tokens
        if room <= max(overlap, 32):
            title_tokens = 0
    pieces = chunk_text(text, encoder=enc, max_tokens=limit, overlap=overlap, headings=headings,
                        source=doc.source, title=doc.title)
    records = []
    for c in pieces:
        meta = dict(doc.metadata)
        meta.update(source=doc.source, doc_id=doc.id, chunk=c.index, start=c.start, end=c.end, tokens=c.n_tokens)
        if c.title:
            meta["title"] = c.title
        rec: dict[str, Any] = {"id": f"{doc.id}#{c.index}" if len(pieces) > 1 or c.index else doc.id,
                               "text": c.text, "metadata": meta}
        if title_tokens and c.start > 0:
            rec["index_text"] = f"{doc.title}\n\n{c.text}"
        records.append(rec)
    return records


def file_records(path: Path, docs: Sequence[Document], digest: str, enc: Encoder, *, max_tokens: int | None,
                 overlap: int, headings: bool | None) -> list[dict[str, Any]]:
    """The records of one file's documents, stamped with the file's hash (local and Ray ingestion share it)."""
    use_headings = headings if headings is not None else path.suffix.lower() in (".md", ".markdown")
    records = []
    for doc in docs:
        for rec in chunk_records(doc, enc, max_tokens=max_tokens, overlap=overlap, headings=use_headings):
            rec["metadata"]["doc_hash"] = digest
            records.append(rec)
    return records


def index_paths(
    collection: Collection,
    paths: Sequence[str | Path],
    *,
    max_tokens: int | None = None,
    overlap: int = 50,
    headings: bool | None = None,
    text_field: str = "text",
    id_field: str | None = None,
    prune: bool = False,
    batch_chunks: int = 512,
    show_progress: bool = False,
    vector_cache: VectorCache | None = None,
) -> IndexReport:
    """Index files and folders into a collection (see the module docstring).

    Args:
        collection: the target (its encoder chunks and embeds).
        paths: files and folders (.txt .md .html .pdf .jsonl .csv).
        max_tokens, overlap: chunk size and overlap in the encoder's tokens.
        headings: markdown headings as chunk boundaries (default: on for .md files).
        text_field, id_field: JSONL/CSV fields.
        prune: delete the chunks of files under ``paths`` that no longer exist.
        batch_chunks: chunks embedded and committed together (files are never split across commits).
        vector_cache: a :class:`~embedsmith.encoders.cache.VectorCache`: chunks whose text (and model) it
            has seen reuse their vectors (``embedsmith index`` uses the default one unless --no-vector-cache).
    """
    if vector_cache is None:
        return _index_paths(collection, paths, max_tokens=max_tokens, overlap=overlap, headings=headings,
                            text_field=text_field, id_field=id_field, prune=prune, batch_chunks=batch_chunks,
                            show_progress=show_progress)
    with using_cache(collection.encoder, vector_cache):
        hits = vector_cache.hits
        report = _index_paths(collection, paths, max_tokens=max_tokens, overlap=overlap, headings=headings,
                              text_field=text_field, id_field=id_field, prune=prune, batch_chunks=batch_chunks,
                              show_progress=show_progress)
        report.chunks_cached = vector_cache.hits - hits
    return report


def _index_paths(collection: Collection, paths: Sequence[str | Path], *, max_tokens: int | None, overlap: int,
                 headings: bool | None, text_field: str, id_field: str | None, prune: bool, batch_chunks: int,
                 show_progress: bool) -> IndexReport:
    from tqdm.auto import tqdm

    files = walk(paths)
    report = IndexReport()
    known = {src: h for src, h in collection.distinct("source", "doc_hash") if src is not None}
    pending: list[dict[str, Any]] = []
    pending_sources: list[str] = []
    claimed: dict[str, tuple[str, int | None]] = {}  # document id -> (file, line) indexed in this run

    def flush() -> None:
        if pending_sources:
            collection.replace({"source": {"$in": list(pending_sources)}}, pending,
                               show_progress=show_progress and len(pending) > 256)
            report.chunks += len(pending)
            pending.clear()
            pending_sources.clear()

    for f in tqdm(files, disable=not show_progress, desc=f"indexing into {collection.name}", unit="file"):
        source = str(f)
        try:
            raw = f.read_bytes()
        except OSError as exc:
            report.files_skipped.append((source, exc.strerror or str(exc)))
            warnings.warn(f"skipped {source}: {exc.strerror or exc}", SkippedFileWarning, stacklevel=2)
            continue
        digest = hashlib.sha256(raw).hexdigest()
        if known.get(source) == digest:
            report.files_unchanged += 1
            continue
        try:
            docs = read_documents(f, raw, text_field=text_field, id_field=id_field)
        except UnreadableFileError as exc:
            report.files_skipped.append((source, str(exc)))
            warnings.warn(f"skipped {source}: {exc}", SkippedFileWarning, stacklevel=2)
            continue
        clash = _id_clash(collection, docs, source, claimed)
        if clash:
            report.files_skipped.append((source, clash))
            warnings.warn(f"skipped {source}: {clash}", SkippedFileWarning, stacklevel=2)
            continue
        pending += file_records(f, docs, digest, collection.encoder, max_tokens=max_tokens, overlap=overlap,
                                headings=headings)
        report.documents += len(docs)
        report.files_indexed += 1
        pending_sources.append(source)
        if len(pending) >= batch_chunks:
            flush()
    flush()
    if prune:
        report.files_pruned = prune_gone(collection, paths, files, known)
    return report


def prune_gone(collection: Collection, paths: Sequence[str | os.PathLike[str]], files: Sequence[Path],
               known: Mapping[str, Any]) -> int:
    """Delete the chunks of files under ``paths`` that are stored (``known`` sources) but no longer among
    ``files``; the number of such files (local and Ray ingestion share it)."""
    roots = [Path(p).resolve() for p in paths]
    present = {str(f) for f in files}
    gone = [src for src in known if src not in present and _under(Path(src), roots)]
    for part in range(0, len(gone), 500):
        collection.delete(where={"source": {"$in": gone[part : part + 500]}})
    return len(gone)


def _id_clash(collection: Collection, docs: Sequence[Document], source: str,
              claimed: dict[str, tuple[str, int | None]]) -> str | None:
    """Why ``docs`` cannot be indexed because another file holds one of their ids, or None.

    Record ids are the documents' own ids (evaluation matches judgements on them), so two files that both
    use id "1" would silently replace each other's records; the second file is refused, naming both.
    """
    def where(src: str, line: int | None) -> str:
        return f"{src} line {line}" if line else src

    ids = [d.id for d in docs]
    for d in docs:
        other = claimed.get(d.id)
        if other is not None and other[0] != source:
            return f"id {d.id!r} (line {d.line}) is already used by {where(*other)}"
    stored = {r["metadata"].get("doc_id", r["id"]): r["metadata"].get("source")
              for r in collection.get(ids + [f"{i}#0" for i in ids])}
    for d in docs:
        src = stored.get(d.id)
        if src is not None and src != source:
            return f"id {d.id!r} (line {d.line}) is already used by {src} in collection {collection.name!r}"
    for d in docs:
        claimed[d.id] = (source, d.line)
    return None


def _under(path: Path, roots: Sequence[Path]) -> bool:
    p = path.resolve()
    return any(p == r or r in p.parents for r in roots)
