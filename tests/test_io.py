"""The readers of users' files (embedsmith.io): formats, line numbers and byte offsets in errors, problem counts.

Small real files written here, and the data slices in tests/data read against an independent parse. No models.
"""

from __future__ import annotations

import csv
import json
from collections import Counter

import pytest

from conftest import CRAN, DATA, read_stsb
from embedsmith import FileFormatError, InvalidInputError
from embedsmith.io import (
    decode_text,
    parse_records,
    parse_table,
    read_beir_corpus,
    read_beir_queries,
    read_jsonl,
    read_labelled,
    read_lines,
    read_qrels,
    read_text,
    read_texts,
    split_lines,
)


def test_beir_slice_reads_as_json_and_csv_read_it():
    problems: Counter[str] = Counter()
    corpus = read_beir_corpus(CRAN / "corpus.jsonl", problems)
    queries = read_beir_queries(CRAN / "queries.jsonl", problems)
    qrels = list(read_qrels(CRAN / "qrels" / "dev.tsv", problems))
    assert problems == Counter()
    rows = [json.loads(line) for line in (CRAN / "corpus.jsonl").read_text(encoding="utf-8").splitlines()]
    assert corpus == {r["_id"]: f"{r['title']} {r['text']}".strip() for r in rows}
    assert queries == {r["_id"]: r["text"] for r in map(json.loads, (CRAN / "queries.jsonl").open(encoding="utf-8"))}
    with open(CRAN / "qrels" / "dev.tsv", newline="", encoding="utf-8") as f:
        want = [(r["query-id"], r["corpus-id"], int(r["score"])) for r in csv.DictReader(f, delimiter="\t")]
    assert qrels == want and len(qrels) == 188


def test_beir_readers_count_bad_rows(tmp_path):
    (tmp_path / "corpus.jsonl").write_text(
        '{"_id": "d1", "title": "Wings", "text": "lift"}\n{not json\n[1, 2]\n{"text": "no id"}\n'
        '{"_id": "d2", "text": "  "}\n{"_id": 7, "text": "numeric id"}\n', encoding="utf-8")
    problems: Counter[str] = Counter()
    assert read_beir_corpus(tmp_path / "corpus.jsonl", problems) == {"d1": "Wings lift", "7": "numeric id"}
    assert problems == {"malformed_rows": 2, "malformed_docs": 1, "empty_docs": 1}
    (tmp_path / "queries.tsv").write_text("q1\twing lift\n\nq2\nq3\t heat \n", encoding="utf-8")
    problems.clear()
    assert read_beir_queries(tmp_path / "queries.tsv", problems) == {"q1": "wing lift", "q3": "heat"}
    assert problems == {"malformed_queries": 1}
    (tmp_path / "qrels.txt").write_text("q1 0 d1 2\nq1\td2\t1\nq2 d1\nq3\td1\tone\n\n", encoding="utf-8")
    problems.clear()
    assert list(read_qrels(tmp_path / "qrels.txt", problems)) == [("q1", "d1", 2), ("q1", "d2", 1)]
    assert problems == {"malformed_qrels": 2}
    with pytest.raises(InvalidInputError, match=r"qrels file '.*nope\.tsv' does not exist"):
        list(read_qrels(tmp_path / "nope.tsv", problems))


def test_jsonl_errors_name_the_file_and_line(tmp_path):
    f = tmp_path / "rows.jsonl"
    f.write_text('{"text": "one"}\n\n{"text": \n', encoding="utf-8")
    with pytest.raises(FileFormatError, match=r"rows\.jsonl:3: not JSON \(Expecting value\)") as err:
        list(read_jsonl(f))
    assert isinstance(err.value, InvalidInputError) and (err.value.line, err.value.path) == (3, str(f))
    f.write_text('{"text": "one"}\n["a list"]\n', encoding="utf-8")
    with pytest.raises(FileFormatError, match=r"rows\.jsonl:2: expected a JSON object, got list"):
        list(read_jsonl(f))
    problems: Counter[str] = Counter()
    assert [n for n, _ in read_jsonl(f, problems=problems)] == [1] and problems == {"malformed_rows": 1}
    # CRLF endings, and a line separator inside a JSON string (valid JSON, which str.splitlines() would cut)
    f.write_bytes('{"text": "a\u2028b"}\r\n{"text": "c"}\r\n'.encode())
    assert [(n, r["text"]) for n, r in read_jsonl(f)] == [(1, "a\u2028b"), (2, "c")]


def test_bytes_that_are_not_utf8_are_named_by_offset(tmp_path):
    f = tmp_path / "latin1.txt"
    f.write_bytes("first\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(FileFormatError, match=r"latin1\.txt: not UTF-8 text \(byte 9, line 2: invalid") as err:
        read_text(f)
    assert err.value.byte == 9 and err.value.line is None
    bom = b"\xef\xbb\xbf"
    assert decode_text(bom + "café".encode(), "x") == "café"  # the BOM is dropped
    with pytest.raises(FileFormatError, match=r"byte 5, line 1") as err:  # the offset counts the BOM
        decode_text(bom + b"ab\xffc", "x")
    with pytest.raises(FileFormatError, match=r"binary file \(a NUL byte at byte 3\)"):
        decode_text(b"abc\x00def", "x")
    with pytest.raises(InvalidInputError, match=r"input file '.*missing\.txt' does not exist"):
        read_lines(tmp_path / "missing.txt", what="input file")


def test_csv_and_tsv_tables(tmp_path):
    f = tmp_path / "t.csv"
    f.write_text('id,text\n1,"Hello, world"\n2,"two\nlines"\n3\n', encoding="utf-8")
    table = parse_table(f.read_text(encoding="utf-8"), f)
    assert table.columns == ["id", "text"]
    assert table.rows == [(2, {"id": "1", "text": "Hello, world"}), (4, {"id": "2", "text": "two\nlines"}),
                          (5, {"id": "3", "text": None})]
    f.write_text("id,text\n1,Hello, world\n", encoding="utf-8")  # an unquoted comma would cut the text short
    with pytest.raises(FileFormatError, match=r"t\.csv:2: 3 cells, but the header names 2; quote cells that hold ','"):
        parse_table(f.read_text(encoding="utf-8"), f)
    problems: Counter[str] = Counter()
    assert parse_table(f.read_text(encoding="utf-8"), f, problems=problems).rows == []
    assert problems == {"malformed_rows": 1}
    # A header with a tab means TSV; quoting off reads quotes as text (SICK and SemEval files)
    tsv = 'a\tb\n"quoted" start\t2\n'
    assert parse_table(tsv, "x.txt", quoting=False).rows == [(2, {"a": '"quoted" start', "b": "2"})]
    assert parse_records("a,b,5.0\n\nc,\"d, e\",2.5\n", "sts.csv") == [(1, ["a", "b", "5.0"]),
                                                                        (3, ["c", "d, e", "2.5"])]


def test_csv_cells_over_128_kib_are_read_and_the_limit_is_restored(tmp_path):
    before = csv.field_size_limit()
    long_text = "x" * 200_000
    table = parse_table(f"id,text\n1,{long_text}\n", "long.csv")
    assert table.rows[0][1]["text"] == long_text and csv.field_size_limit() == before


def test_data_slices_read_like_the_csv_module():
    a, b, s = read_stsb()
    records = parse_records(read_text(DATA / "stsb" / "stsb-en-dev.csv"), "stsb")
    assert [(r[0], r[1], float(r[2])) for _, r in records] == list(zip(a, b, s, strict=True))
    texts, labels = read_labelled(DATA / "banking77" / "train-20x40.csv")
    assert len(texts) == 800 and len(set(labels)) == 20
    sick = parse_table(read_text(DATA / "sick" / "SICK_trial-300.txt"), "SICK_trial-300.txt", quoting=False)
    assert len(sick.rows) == 300 and sick.columns[:3] == ["pair_ID", "sentence_A", "sentence_B"]


def test_read_texts_formats_and_errors(tmp_path):
    (tmp_path / "a.txt").write_text("one\n\n  two\r\nthree", encoding="utf-8")
    assert read_texts(tmp_path / "a.txt") == ["one", "  two", "three"]
    (tmp_path / "a.tsv").write_text("id\tbody\n1\tx\n2\t \n", encoding="utf-8")
    assert read_texts(tmp_path / "a.tsv", column="body") == ["x"]
    with pytest.raises(InvalidInputError, match=r"has no column 'text' \(columns: id, body\)"):
        read_texts(tmp_path / "a.tsv")
    (tmp_path / "a.jsonl").write_text('{"text": "fine"}\n{"title": "t"}\n', encoding="utf-8")
    with pytest.raises(FileFormatError, match=r"a\.jsonl:2: no field 'text' \(fields: 'title'\)"):
        read_texts(tmp_path / "a.jsonl")
    (tmp_path / "a.jsonl").write_text('{"text": 5}\n', encoding="utf-8")
    with pytest.raises(FileFormatError, match=r"a\.jsonl:1: field 'text' is not a string: 5"):
        read_texts(tmp_path / "a.jsonl")
    (tmp_path / "empty.txt").write_text("\n  \n", encoding="utf-8")
    with pytest.raises(InvalidInputError, match="holds no texts"):
        read_texts(tmp_path / "empty.txt")


def test_lines_keep_blank_ones_for_aligned_files(tmp_path):
    assert split_lines("a\r\nb\rc\n") == ["a", "b", "c"] and split_lines("") == []
    (tmp_path / "src.txt").write_text("eins\n\ndrei\n", encoding="utf-8")
    assert read_lines(tmp_path / "src.txt", keep_blank=True) == ["eins", "", "drei"]
    assert read_lines(tmp_path / "src.txt") == ["eins", "drei"]
