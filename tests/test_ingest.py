"""Ingestion: files of every supported type, skip-unchanged, replace-changed, prune, unreadable files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from embedsmith import open_collection
from embedsmith.ingest import SkippedFileWarning, html_to_text, index_paths


def minimal_pdf(text: str) -> bytes:
    """A one-page PDF with a real text layer (Helvetica), built by hand with a correct xref table."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for n, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % n + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def test_html_to_text_keeps_visible_text():
    text, title = html_to_text("<html><head><title>Wings</title><style>p{}</style></head><body><p>Lift &amp; "
                               "drag.</p><script>var x;</script><p>Second para.</p></body></html>")
    assert title == "Wings" and text == "Lift & drag.\n\nSecond para."


def test_index_every_type_then_skip_replace_prune(tmp_path, minilm_onnx):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("Cats purr when they are content. " * 80)  # long: several chunks
    (docs / "b.md").write_text("# Wings\nLift grows with angle of attack.\n\n## Drag\nDrag grows with speed.\n")
    (docs / "c.html").write_text("<html><head><title>Heat</title></head><body><p>Heat flows in slabs.</p></body>")
    (docs / "d.pdf").write_bytes(minimal_pdf("Shock waves form at supersonic speed."))
    (docs / "e.jsonl").write_text(json.dumps({"_id": "e1", "title": "Flutter", "text": "Panels flutter."}) + "\n"
                                  + json.dumps({"_id": "e2", "text": "Boundary layers separate."}) + "\n")
    (docs / "f.csv").write_text("id,text,lang\nf1,Jet noise is loud.,en\nf2,Rotors hum.,en\n")
    (docs / "g.txt").write_bytes(b"\x00\x01\x02 binary junk \xff\xfe")
    (docs / "h.txt").write_bytes("caf\xe9 latin-1".encode("latin-1"))
    store = tmp_path / "store"
    with open_collection("kb", store=store, encoder=minilm_onnx) as c:
        with pytest.warns(SkippedFileWarning):
            report = index_paths(c, [docs])
        assert report.files_indexed == 6 and len(report.files_skipped) == 2
        assert {why.split(" (")[0] for _, why in report.files_skipped} == {"binary file", "not UTF-8 text"}
        assert report.documents == 8
        a_chunks = c.get(where={"source": str(docs / "a.txt")})
        assert len(a_chunks) >= 2
        for rec in a_chunks:
            m = rec["metadata"]
            full = (docs / "a.txt").read_text()
            assert full[m["start"] : m["end"]] == rec["text"] and m["doc_hash"] and m["tokens"] <= 254
        assert [r["metadata"]["chunk"] for r in a_chunks] == list(range(len(a_chunks)))
        md = c.get(where={"source": str(docs / "b.md")})
        assert {r["metadata"].get("title") for r in md} == {"Wings", "Drag"}
        assert c.search("supersonic shock", k=1).metadata[0]["source"].endswith("d.pdf")
        assert c.search("heat in slabs", k=1, mode="bm25").metadata[0]["title"] == "Heat"
        assert c.get(["e1"])[0]["text"].startswith("Flutter")
        assert c.get(["f1"])[0]["text"] == "Jet noise is loud."
        total = c.count()

        again = index_paths(c, [docs])  # nothing changed
        assert again.files_unchanged == 6 and again.files_indexed == 0 and c.count() == total

        (docs / "a.txt").write_text("Dogs bark at night.")  # now a single chunk
        (docs / "c.html").unlink()
        changed = index_paths(c, [docs], prune=True)
        assert changed.files_indexed == 1 and changed.files_pruned == 1
        assert [r["text"] for r in c.get(where={"source": str(docs / "a.txt")})] == ["Dogs bark at night."]
        assert c.get(where={"source": str(docs / "c.html")}) == []
        assert c.search("barking dogs", k=1).metadata[0]["source"].endswith("a.txt")
        assert c.search("cats purr", k=5, mode="bm25").ids == []


def test_later_chunks_are_embedded_with_their_title(tmp_path, minilm_onnx):
    body = " ".join(f"Sentence {i} about boundary layer transition on swept wings." for i in range(60))
    (tmp_path / "c.jsonl").write_text(json.dumps({"_id": "d1", "title": "Swept wing transition", "text": body}))
    with open_collection("t", store=tmp_path / "s", encoder=minilm_onnx) as c:
        index_paths(c, [tmp_path / "c.jsonl"])
        recs = c.get(where={"doc_id": "d1"}, include_vectors=True)
        assert len(recs) >= 2 and recs[0]["text"].startswith("Swept wing transition")
        second = recs[1]
        full = "Swept wing transition\n\n" + body
        assert full[second["metadata"]["start"] : second["metadata"]["end"]] == second["text"]
        expected = minilm_onnx.encode(["Swept wing transition\n\n" + second["text"]], kind="document")[0]
        np.testing.assert_allclose(second["vector"], expected, atol=1e-5)
        assert minilm_onnx.count_tokens(["Swept wing transition\n\n" + second["text"]])[0] <= 256
        # bm25 reads the title in front of every chunk too
        assert len(c.search("swept wing transition", k=10, mode="bm25")) == len(recs)


def test_colliding_duplicate_and_oversized_rows_are_skipped_with_reasons(tmp_path, minilm_onnx):
    """Two JSONL files both using _id "1" silently replaced each other; a duplicate id inside one file named
    neither file nor line; a CSV cell over 128 KiB aborted the whole run; a CSV without the text column was
    "indexed (0 documents)" without a word."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.jsonl").write_text(json.dumps({"_id": "1", "text": "heat flow in slabs"}) + "\n")
    (docs / "b.jsonl").write_text(json.dumps({"_id": "2", "text": "wing flutter"}) + "\n"
                                  + json.dumps({"_id": "1", "text": "boundary layers"}) + "\n")
    (docs / "c.jsonl").write_text("\n".join(json.dumps({"_id": i, "text": f"row {i}"}) for i in ("7", "8", "7")))
    long_text = "supersonic " + "x" * 140_000  # 140,011 characters in one cell (one unknown "word": cheap to embed)
    (docs / "d.csv").write_text("id,text\nlong," + long_text + "\n", encoding="utf-8")
    (docs / "e.csv").write_text("id,body,tag\n1,no text column here,x\n", encoding="utf-8")
    with open_collection("kb", store=tmp_path / "store", encoder=minilm_onnx) as c:
        with pytest.warns(SkippedFileWarning) as caught:
            report = index_paths(c, [docs], max_tokens=64)
        skipped = dict(report.files_skipped)
        assert set(skipped) == {str(docs / "b.jsonl"), str(docs / "c.jsonl"), str(docs / "e.csv")}
        assert "id '1' (line 2) is already used by" in skipped[str(docs / "b.jsonl")]
        assert str(docs / "a.jsonl") in skipped[str(docs / "b.jsonl")]
        assert "id '7' appears twice, on lines 1 and 3" in skipped[str(docs / "c.jsonl")]
        assert "no 'text' column (columns: 'id', 'body', 'tag')" in skipped[str(docs / "e.csv")]
        assert len(caught) == 3
        assert c.get(["1"])[0]["text"] == "heat flow in slabs"  # a.jsonl's record is intact
        long_chunks = c.get(where={"doc_id": "long"})
        assert long_chunks and long_chunks[0]["text"].startswith("supersonic xxx")
        # The next run still refuses b.jsonl (its id belongs to a.jsonl in the collection), and a is unchanged.
        with pytest.warns(SkippedFileWarning):
            again = index_paths(c, [docs], max_tokens=64)
        assert again.files_unchanged == 2 and str(docs / "b.jsonl") in dict(again.files_skipped)
        assert c.get(["1"])[0]["text"] == "heat flow in slabs"


def test_malformed_rows_skip_their_file_naming_the_line(tmp_path, minilm_onnx):
    """An unquoted comma in a CSV cell cut the text short without a word (the rest went nowhere); now the file is
    skipped naming the line. A JSONL line that is not JSON names its line too; the other files are indexed."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.csv").write_text("id,text\n1,Heat flow, in slabs\n", encoding="utf-8")
    (docs / "b.jsonl").write_text('{"_id": "b1", "text": "ok"}\n{"_id": "b2", "text": \n', encoding="utf-8")
    (docs / "c.txt").write_text("Lift on a swept wing.", encoding="utf-8")
    with open_collection("kb", store=tmp_path / "store", encoder=minilm_onnx) as c:
        with pytest.warns(SkippedFileWarning):
            report = index_paths(c, [docs])
        skipped = dict(report.files_skipped)
        assert report.files_indexed == 1 and set(skipped) == {str(docs / "a.csv"), str(docs / "b.jsonl")}
        assert skipped[str(docs / "a.csv")] == "line 2: 3 cells, but the header names 2; quote cells that hold ','"
        assert skipped[str(docs / "b.jsonl")].startswith("line 2: not JSON (Expecting value")
