"""Every reader of users' files: JSONL, CSV/TSV, one text per line, labelled texts, BEIR corpus/queries/qrels.

Files are UTF-8 (a leading BOM is allowed) and lines end in ``\\n``, ``\\r\\n`` or ``\\r``. The readers check what
they read: a missing file is an :class:`~embedsmith.errors.InvalidInputError` naming it, and malformed content a
:class:`~embedsmith.errors.FileFormatError` naming the file and the line (``path:line: what is wrong``), or, for
bytes that are not UTF-8, their byte offset. Readers that take ``problems`` (a :class:`collections.Counter`)
count malformed rows under ``malformed_rows`` and skip them instead, as evaluation does with public data sets.

The ``parse_*`` functions take text already read (ingestion reads the bytes once, to hash them too); the
``read_*`` functions take a path.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import FileFormatError, InvalidInputError

TEXT_COLUMNS = ("text", "sentence", "query", "utterance", "content")
LABEL_COLUMNS = ("label", "category", "intent", "class")
_BINARY_PROBE = 8192  # a NUL byte this early means a binary file, not text


def check_file(path: str | Path, what: str = "file") -> Path:
    """``path`` as a Path, or InvalidInputError naming it (``what`` says which file) when it is not a file."""
    p = Path(path)
    if not p.is_file():
        raise InvalidInputError(f"{what} {str(p)!r} does not exist")
    return p


def decode_text(raw: bytes, path: str | Path) -> str:
    """The text of a file's bytes.

    Raises:
        FileFormatError: a NUL byte near the start (a binary file), or bytes that are not UTF-8 (the offset
            and line are named).
    """
    nul = raw.find(b"\x00", 0, _BINARY_PROBE)
    if nul >= 0:
        raise FileFormatError(path, f"binary file (a NUL byte at byte {nul})", byte=nul)
    bom = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0
    try:
        return str(memoryview(raw)[bom:], "utf-8")
    except UnicodeDecodeError as exc:
        at = bom + exc.start
        line = raw.count(b"\n", 0, at) + 1
        raise FileFormatError(path, f"not UTF-8 text (byte {at}, line {line}: {exc.reason})", byte=at) from None


def read_text(path: str | Path, *, what: str = "file") -> str:
    """The text of a file (see :func:`decode_text`); InvalidInputError when it does not exist."""
    p = check_file(path, what)
    return decode_text(p.read_bytes(), p)


def split_lines(text: str) -> list[str]:
    """Lines without their endings (``\\n``, ``\\r\\n``, ``\\r``); a final line ending starts no empty line.

    Unlike :meth:`str.splitlines`, separators that JSON allows inside strings (U+2028, U+0085, ...) do not split.
    """
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def read_lines(path: str | Path, *, what: str = "file", keep_blank: bool = False) -> list[str]:
    """One text per line; blank lines are dropped unless ``keep_blank`` (aligned files keep them)."""
    lines = split_lines(read_text(path, what=what))
    return lines if keep_blank else [line for line in lines if line.strip()]


# ------------------------------------------------------------------------------------------------- JSONL


def parse_jsonl(text: str, path: str | Path, *, problems: Counter[str] | None = None
                ) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) per non-blank line.

    Raises:
        FileFormatError: a line that is not JSON or not a JSON object (unless ``problems`` counts it).
    """
    for n, line in enumerate(split_lines(text), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            if problems is None:
                raise FileFormatError(path, f"not JSON ({getattr(exc, 'msg', exc)})", line=n) from None
            problems["malformed_rows"] += 1
            continue
        if not isinstance(row, dict):
            if problems is None:
                raise FileFormatError(path, f"expected a JSON object, got {type(row).__name__}", line=n)
            problems["malformed_rows"] += 1
            continue
        yield n, row


def read_jsonl(path: str | Path, *, what: str = "file", problems: Counter[str] | None = None
               ) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) per non-blank line of a JSONL file (see :func:`parse_jsonl`)."""
    return parse_jsonl(read_text(path, what=what), path, problems=problems)


# --------------------------------------------------------------------------------------------- CSV / TSV


@dataclass(frozen=True)
class Table:
    """A CSV/TSV file with a header: its column names, and each row with the line it ends on.

    A row shorter than the header has None in the missing columns.
    """

    columns: list[str]
    rows: list[tuple[int, dict[str, str | None]]]


@contextmanager
def _long_fields() -> Iterator[None]:
    # Python's csv refuses fields over 128 KiB by default; a long document is not a broken file. The limit is
    # process-wide, so it is raised only while a file is parsed.
    limit = csv.field_size_limit()
    csv.field_size_limit(max(limit, 1 << 30))
    try:
        yield
    finally:
        csv.field_size_limit(limit)


def _delimiter(text: str, suffix: str) -> str:
    if suffix == ".tsv":
        return "\t"
    first = text[: text.find("\n")] if "\n" in text else text
    return "\t" if "\t" in first else ","


def parse_table(text: str, path: str | Path, *, delimiter: str | None = None, quoting: bool = True,
                problems: Counter[str] | None = None) -> Table:
    """Rows of a CSV/TSV text with a header line.

    Args:
        delimiter: ``","`` or ``"\\t"``; default: tab for ``.tsv`` files, else a tab when the header holds one,
            else a comma.
        quoting: False reads ``"`` as an ordinary character (SICK and SemEval TSV files).
        problems: count rows with more cells than the header names (``malformed_rows``) instead of raising.

    Raises:
        FileFormatError: a row with more cells than the header names (a cell holding an unquoted delimiter),
            or CSV the parser refuses (the line is named).
    """
    sep = delimiter or _delimiter(text, Path(path).suffix.lower())
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=sep,
                            quoting=csv.QUOTE_MINIMAL if quoting else csv.QUOTE_NONE)
    rows: list[tuple[int, dict[str, str | None]]] = []
    with _long_fields():
        try:
            columns = list(reader.fieldnames or [])
            for row in reader:
                if None in row:  # DictReader files cells beyond the header under None
                    if problems is None:
                        extra = len(row[None])
                        raise FileFormatError(path, f"{len(columns) + extra} cells, but the header names "
                                                    f"{len(columns)}; quote cells that hold {sep!r}",
                                              line=reader.line_num)
                    problems["malformed_rows"] += 1
                    continue
                rows.append((reader.line_num, row))
        except csv.Error as exc:
            raise FileFormatError(path, f"not valid CSV ({exc})", line=reader.line_num) from None
    return Table(columns, rows)


def parse_records(text: str, path: str | Path, *, delimiter: str = ",") -> list[tuple[int, list[str]]]:
    """(line number, cells) per non-empty row of a CSV text without a header (e.g. the STS Benchmark).

    Raises:
        FileFormatError: CSV the parser refuses (the line is named).
    """
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    out: list[tuple[int, list[str]]] = []
    with _long_fields():
        try:
            out = [(reader.line_num, cells) for cells in reader if cells]
        except csv.Error as exc:
            raise FileFormatError(path, f"not valid CSV ({exc})", line=reader.line_num) from None
    return out


def read_rows(path: str | Path, *, what: str = "file", problems: Counter[str] | None = None
              ) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, row) of a JSONL file, or of a CSV/TSV file with a header (any other suffix)."""
    p = check_file(path, what)
    text = read_text(p)
    if p.suffix.lower() == ".jsonl":
        return parse_jsonl(text, p, problems=problems)
    return iter(parse_table(text, p, problems=problems).rows)


# ------------------------------------------------------------------------------------------------- texts


def read_texts(path: str | Path, *, column: str = "text", what: str = "file") -> list[str]:
    """Texts from a CSV/TSV with a header or a JSONL file (``column``), or a text file (one per line).

    Blank texts are skipped.

    Raises:
        InvalidInputError: a missing file, a missing column (the columns are listed), or no texts.
        FileFormatError: a JSONL line without a string ``column`` (named), or malformed content.
    """
    p = check_file(path, what)
    suffix = p.suffix.lower()
    out: list[str] = []
    if suffix in (".csv", ".tsv"):
        table = parse_table(read_text(p), p)
        if column not in table.columns:
            raise InvalidInputError(f"{p} has no column {column!r} (columns: {', '.join(table.columns)})")
        out = [v for _, row in table.rows if (v := row.get(column)) is not None and v.strip()]
    elif suffix == ".jsonl":
        for n, row in read_jsonl(p):
            if column not in row:
                raise FileFormatError(p, f"no field {column!r} (fields: {', '.join(map(repr, row))})", line=n)
            value = row[column]
            if not isinstance(value, str):
                raise FileFormatError(p, f"field {column!r} is not a string: {json.dumps(value)[:40]}", line=n)
            if value.strip():
                out.append(value)
    else:
        out = read_lines(p)
    if not out:
        raise InvalidInputError(f"{p} holds no texts")
    return out


def _pick(columns: Sequence[str], wanted: str | None, candidates: Sequence[str], what: str, path: Path) -> str:
    if wanted is not None:
        if wanted not in columns:
            raise InvalidInputError(f"{path}: no column {wanted!r} (columns: {', '.join(columns)})")
        return wanted
    for c in candidates:
        if c in columns:
            return c
    raise InvalidInputError(
        f"{path}: cannot tell the {what} column (columns: {', '.join(columns)}); name it with --{what}-column"
    )


def read_labelled(path: str | Path, *, text_column: str | None = None, label_column: str | None = None,
                  problems: Counter[str] | None = None) -> tuple[list[str], list[str]]:
    """Texts and labels from a CSV/TSV with a header or a JSONL file (e.g. Banking77's ``text,category``).

    The columns default to the first of :data:`TEXT_COLUMNS` and :data:`LABEL_COLUMNS` present. Rows with an
    empty text or label, and malformed rows, are skipped and counted in ``problems``.

    Raises:
        InvalidInputError: a missing file or column, or no labelled texts.
    """
    p = check_file(path, "labelled file")
    problems = problems if problems is not None else Counter()
    texts: list[str] = []
    labels: list[str] = []
    tcol = lcol = None
    for _, row in read_rows(p, problems=problems):
        if tcol is None or lcol is None:
            tcol = _pick(list(row), text_column, TEXT_COLUMNS, "text", p)
            lcol = _pick(list(row), label_column, LABEL_COLUMNS, "label", p)
        text, label = row.get(tcol), row.get(lcol)
        if not isinstance(text, str) or not text.strip():
            problems["empty_text"] += 1
            continue
        if label is None or str(label).strip() == "":
            problems["missing_label"] += 1
            continue
        texts.append(text)
        labels.append(str(label))
    if not texts:
        raise InvalidInputError(f"{p} holds no labelled texts")
    return texts, labels


# -------------------------------------------------------------------------------------------------- BEIR


def _beir_texts(path: Path, problems: Counter[str], what: str, *, title: bool) -> dict[str, str]:
    out: dict[str, str] = {}
    for _, row in read_jsonl(path, problems=problems):
        rid = row.get("_id", row.get("id"))
        text = row.get("text")
        if rid in (None, "") or not isinstance(text, str):
            problems[f"malformed_{what}"] += 1
            continue
        if title and isinstance(row.get("title"), str):
            text = f"{row['title']} {text}".strip()  # as BEIR and MTEB join them
        if not text.strip():
            problems[f"empty_{what}"] += 1
            continue
        out[str(rid)] = text
    return out


def read_beir_corpus(path: str | Path, problems: Counter[str]) -> dict[str, str]:
    """Document id -> ``"title text"`` from a BEIR ``corpus.jsonl`` (``_id``, ``title``, ``text``).

    Malformed rows, rows without an id or text, and empty documents are counted in ``problems`` and left out.
    """
    return _beir_texts(check_file(path, "corpus file"), problems, "docs", title=True)


def read_beir_queries(path: str | Path, problems: Counter[str]) -> dict[str, str]:
    """Query id -> text from a BEIR ``queries.jsonl`` or a TSV of ``id<TAB>text`` lines (bad rows counted)."""
    p = check_file(path, "queries file")
    if p.suffix.lower() == ".jsonl":
        return _beir_texts(p, problems, "queries", title=False)
    out: dict[str, str] = {}
    for line in read_lines(p):
        qid, _, text = line.partition("\t")
        if not text.strip():
            problems["malformed_queries"] += 1
            continue
        out[qid.strip()] = text.strip()
    return out


def read_qrels(path: str | Path, problems: Counter[str]) -> Iterator[tuple[str, str, int]]:
    """(query id, document id, grade) from a BEIR qrels TSV (with or without its header) or a TREC qrels
    file (``qid 0 docid grade``, tabs or spaces); malformed lines are counted in ``problems``."""
    for n, line in enumerate(split_lines(read_text(path, what="qrels file")), start=1):
        if not line.strip():
            continue
        fields = [x.strip() for x in (line.split("\t") if "\t" in line else line.split())]
        if n == 1 and not fields[-1].lstrip("-").isdigit():
            continue  # header: query-id corpus-id score
        if len(fields) == 4:  # TREC style: qid 0 docid grade
            fields = [fields[0], fields[2], fields[3]]
        if len(fields) != 3 or not fields[2].lstrip("-").isdigit():
            problems["malformed_qrels"] += 1
            continue
        yield fields[0], fields[1], int(fields[2])


__all__ = ["LABEL_COLUMNS", "TEXT_COLUMNS", "Table", "check_file", "decode_text", "parse_jsonl", "parse_records",
           "parse_table", "read_beir_corpus", "read_beir_queries", "read_jsonl", "read_labelled", "read_lines",
           "read_qrels", "read_rows", "read_text", "read_texts", "split_lines"]
