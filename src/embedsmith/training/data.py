"""Training examples from the formats users have, checked row by row with line numbers in every error.

Everything becomes :class:`TrainingData`: (anchor, positive) pairs, with optional hard negatives per pair,
or (sentence1, sentence2, score) pairs for similarity losses.
"""

from __future__ import annotations

import json
import random
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InvalidInputError
from ..io import parse_records, read_jsonl, read_labelled, read_text, split_lines


@dataclass
class TrainingData:
    """Anchors with positives (and optional negatives), or scored pairs (``scores`` set, 0..1)."""

    anchors: list[str] = field(default_factory=list)
    positives: list[str] = field(default_factory=list)
    negatives: list[list[str]] = field(default_factory=list)  # per pair; empty lists when none
    scores: list[float] | None = None
    source: str = ""

    def __len__(self) -> int:
        return len(self.anchors)

    def add(self, anchor: str, positive: str, negatives: Sequence[str] = ()) -> None:
        self.anchors.append(anchor)
        self.positives.append(positive)
        self.negatives.append(list(negatives))

    def extend(self, other: TrainingData) -> TrainingData:
        if (self.scores is None) != (other.scores is None) and len(self) and len(other):
            raise InvalidInputError("cannot mix scored pairs with anchor/positive pairs in one training set")
        self.anchors += other.anchors
        self.positives += other.positives
        self.negatives += other.negatives
        if other.scores is not None:
            self.scores = (self.scores or []) + other.scores
        self.source = " + ".join(s for s in (self.source, other.source) if s)
        return self


def _text(value: object, path: Path, line: int, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidInputError(f"{path}:{line}: field {name!r} is missing or empty")
    return value


def read_jsonl_pairs(path: Path) -> TrainingData:
    """``{"query", "positive", ["negative" | "negatives"]}`` or ``{"anchor", "positive"}`` per line."""
    data = TrainingData(source=path.name)
    for n, row in read_jsonl(path):
        key = "query" if "query" in row else "anchor"
        if key not in row:
            raise InvalidInputError(f"{path}:{n}: expected a 'query' or 'anchor' field")
        if "positive" not in row:
            raise InvalidInputError(f"{path}:{n}: the {key} has no 'positive'")
        negs = row.get("negatives", row.get("negative", []))
        negs = [negs] if isinstance(negs, str) else negs
        if not isinstance(negs, list):
            raise InvalidInputError(f"{path}:{n}: 'negatives' must be a string or a list of strings")
        data.add(_text(row[key], path, n, key), _text(row["positive"], path, n, "positive"),
                 [_text(x, path, n, "negative") for x in negs])
    return data


def read_scored_pairs(path: Path) -> TrainingData:
    """STS-style CSV without header: sentence1, sentence2, score (scaled to 0..1 by the largest score)."""
    data = TrainingData(source=path.name, scores=[])
    raw: list[float] = []
    for n, fields in parse_records(read_text(path), path):
        if len(fields) < 3:
            raise InvalidInputError(f"{path}:{n}: expected sentence1,sentence2,score")
        try:
            raw.append(float(fields[2]))
        except ValueError:
            raise InvalidInputError(f"{path}:{n}: score {fields[2]!r} is not a number") from None
        data.add(_text(fields[0], path, n, "sentence1"), _text(fields[1], path, n, "sentence2"))
    top = max(raw, default=1.0) or 1.0
    data.scores = [max(0.0, s / (5.0 if top <= 5 else top)) for s in raw]
    return data


def read_label_pairs(path: Path, *, pairs_per_text: int = 1, seed: int = 42) -> TrainingData:
    """Text + label CSV (header ``text`` and ``label``/``category``): each text paired with another text
    of its label, so in-batch negatives come from other labels."""
    texts, labels = read_labelled(path)
    by_label: dict[str, list[str]] = defaultdict(list)
    for t, lbl in zip(texts, labels, strict=True):
        by_label[lbl].append(t)
    rng = random.Random(seed)
    data = TrainingData(source=path.name)
    for t, lbl in zip(texts, labels, strict=True):
        others = [x for x in by_label[lbl] if x != t]
        for other in rng.sample(others, min(pairs_per_text, len(others))):
            data.add(t, other)
    return data


def read_beir(folder: Path, *, split: str = "train") -> tuple[TrainingData, dict[str, str], dict[str, str]]:
    """(query, relevant document) pairs from a BEIR folder's ``qrels/<split>.tsv`` (grade > 0).

    Returns:
        The pairs, the corpus (id -> "title text") and the judged queries (id -> text).

    Raises:
        InvalidInputError: a judged query with no relevant document in the corpus (named), or no pairs.
    """
    from collections import Counter

    from ..evaluation.tasks import RetrievalTask

    task = RetrievalTask.from_beir(folder, split=split)
    problems = Counter(task.problems)
    if problems.get("queries_without_relevant_doc"):
        raise InvalidInputError(
            f"{folder}/qrels/{split}.tsv: {problems['queries_without_relevant_doc']} queries have no relevant "
            "document in the corpus (a query needs a positive)")
    data = TrainingData(source=f"{folder.name}/{split}")
    for qid, rel in task.qrels.items():
        for did, grade in rel.items():
            if grade > 0:
                data.add(task.queries[qid], task.corpus[did])
    return data, task.corpus, {q: task.queries[q] for q in task.qrels}


def read_titled_corpus(path: Path) -> TrainingData:
    """Title -> body pairs from a JSONL corpus with ``title`` and ``text`` (self-supervised)."""
    data = TrainingData(source=f"{path.name} (title -> text)")
    for _, row in read_jsonl(path):
        title, text = row.get("title"), row.get("text")
        if isinstance(title, str) and title.strip() and isinstance(text, str) and text.strip():
            data.add(title.strip(), text.strip())
    return data


_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def inverse_cloze(passages: Sequence[str], *, min_words: int = 6, seed: int = 42) -> TrainingData:
    """Pseudo-queries cut from the passages themselves (inverse cloze task): one sentence of each passage
    is the query, the rest of the passage its positive. Passages of one sentence are skipped."""
    rng = random.Random(seed)
    data = TrainingData(source="inverse cloze")
    for p in passages:
        sentences = [s.strip() for s in _SENTENCE.split(p.strip()) if s.strip()]
        sentences = [s for s in sentences if len(s.split()) >= min_words] or sentences
        if len(sentences) < 2:
            continue
        i = rng.randrange(len(sentences))
        rest = " ".join(s for j, s in enumerate(sentences) if j != i)
        data.add(sentences[i], rest)
    return data


def load_training_data(path: str | Path, *, split: str = "train") -> TrainingData:
    """Read training data in any supported format, chosen by what ``path`` is.

    - a BEIR folder: (query, relevant document) pairs from ``qrels/<split>.tsv``;
    - ``.jsonl`` with ``query``/``anchor`` + ``positive`` (+ ``negative(s)``), or a corpus with ``title`` and
      ``text`` (title -> text pairs);
    - ``.csv``/``.tsv``: with a ``text`` + ``label``/``category`` header, pairs within labels; without a
      header, ``sentence1,sentence2,score`` scored pairs.

    Raises:
        InvalidInputError: a missing or empty file, missing fields (with the line number), no pairs.
    """
    p = Path(path)
    if p.is_dir():
        data = read_beir(p, split=split)[0]
    else:
        text = read_text(p, what="training data")
        if not text.strip():
            raise InvalidInputError(f"training data {p!s} is empty")
        first_line = next(x for x in split_lines(text) if x.strip())
        if p.suffix == ".jsonl":
            try:
                first = json.loads(first_line)
            except json.JSONDecodeError:
                first = {}
            is_corpus = isinstance(first, dict) and "title" in first and "positive" not in first
            data = read_titled_corpus(p) if is_corpus else read_jsonl_pairs(p)
        else:
            cols = [c.strip() for c in re.split(r"[,\t]", first_line.lower())]
            if "text" in cols and any(c in cols for c in ("label", "category", "intent")):
                data = read_label_pairs(p)
            else:
                data = read_scored_pairs(p)
    if not len(data):
        raise InvalidInputError(f"{p} yields no training pairs")
    return data
