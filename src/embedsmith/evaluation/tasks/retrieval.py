"""Retrieval: queries, a corpus and graded judgements (BEIR layout); nDCG/MAP/MRR/recall/precision at k."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from ...errors import InvalidInputError
from ...io import check_file, read_beir_corpus, read_beir_queries, read_qrels
from ..embed import cosine_matrix, top_indices
from ..metrics import DEFAULT_KS, per_query_scores, retrieval_scores
from ..results import ItemScores, MetricItems
from .base import Embed, Task, digest


@dataclass
class RetrievalTask(Task):
    """Queries, a corpus, and graded judgements (BEIR layout)."""

    task_type: ClassVar[str] = "retrieval"
    help: ClassVar[str] = "BEIR folder (corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv): nDCG/MAP/MRR/recall/precision@k."
    columns: ClassVar[tuple[str, ...]] = ("ndcg_at_10", "mrr_at_10", "recall_at_100", "map_at_100")
    corpus: dict[str, str]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    split: str = "test"
    ks: tuple[int, ...] = DEFAULT_KS

    @classmethod
    def load(cls, path: str | Path, path2: str | Path | None = None, *, split: str | None = None,
             text_column: str | None = None, label_column: str | None = None) -> RetrievalTask:
        cls.check_paths(path2)
        return cls.from_beir(path, split=split)

    @classmethod
    def from_beir(cls, folder: str | Path, *, split: str | None = None, name: str | None = None) -> RetrievalTask:
        """Read ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv``.

        ``split`` defaults to ``test``, else ``dev``, else the only qrels file. Judgements of unknown
        queries or documents, malformed rows, and queries without a relevant document are counted in
        ``problems`` and left out.
        """
        root = Path(folder)
        if not root.is_dir():
            raise InvalidInputError(f"BEIR folder {str(root)!r} does not exist")
        corpus_path = check_file(root / "corpus.jsonl", "corpus file")
        queries_path = check_file(root / "queries.jsonl", "queries file")
        qrels_dir = root / "qrels"
        available = sorted(p.stem for p in qrels_dir.glob("*.tsv")) if qrels_dir.is_dir() else []
        if split is None:
            split = next((s for s in ("test", "dev") if s in available), available[0] if len(available) == 1 else None)
        if split is None or split not in available:
            raise InvalidInputError(
                f"{root}: no qrels for split {split!r} (found: {', '.join(available) or 'none'} in qrels/)"
            )
        qrels_path = qrels_dir / f"{split}.tsv"
        problems: Counter[str] = Counter()
        corpus = read_beir_corpus(corpus_path, problems)
        queries = read_beir_queries(queries_path, problems)
        if not corpus:
            raise InvalidInputError(f"{corpus_path} holds no documents")
        qrels: dict[str, dict[str, int]] = defaultdict(dict)
        for qid, did, grade in read_qrels(qrels_path, problems):
            if qid not in queries:
                problems["qrels_unknown_query"] += 1
            elif did not in corpus:
                problems["qrels_unknown_doc"] += 1
            else:
                qrels[qid][did] = grade
        judged = {q: rel for q, rel in qrels.items() if any(g > 0 for g in rel.values())}
        if len(judged) < len(qrels):
            problems["queries_without_relevant_doc"] += len(qrels) - len(judged)
        unjudged = len(queries) - len(qrels)
        if unjudged:
            problems["queries_without_qrels"] += unjudged
        if not judged:
            raise InvalidInputError(f"{qrels_path}: no query has a relevant document in the corpus")
        return cls(name or root.name, corpus, queries, judged, split, problems=dict(problems),
                   dataset_revision=digest(corpus_path, queries_path, qrels_path))

    @property
    def n_examples(self) -> int:
        return len(self.qrels)

    def encode(self, embed: Embed) -> tuple[list[str], np.ndarray, list[str], np.ndarray]:
        """Query ids, query vectors, document ids and document vectors."""
        qids = list(self.qrels)
        dids = list(self.corpus)
        docs = embed([self.corpus[d] for d in dids], "document")
        qs = embed([self.queries[q] for q in qids], "query")
        return qids, qs, dids, docs

    def rank(self, qids: Sequence[str], qs: np.ndarray, dids: Sequence[str], docs: np.ndarray,
             k: int | None = None) -> dict[str, list[str]]:
        """Exact cosine search: each query's top ``k`` (default: the largest cut-off) document ids."""
        k = k or max(self.ks)
        run: dict[str, list[str]] = {}
        for lo in range(0, len(qids), 256):
            top = top_indices(cosine_matrix(qs[lo : lo + 256], docs), k)
            for qid, row in zip(qids[lo : lo + 256], top, strict=True):
                run[qid] = [dids[i] for i in row]
        return run

    def score_run(self, run: dict[str, list[str]]) -> dict[str, float]:
        scores = retrieval_scores(self.qrels, run, self.ks)
        return {"main_score": scores["ndcg_at_10"], **scores}

    def items_of_run(self, run: dict[str, list[str]]) -> ItemScores:
        """Per-query scores of a run: ``main_score`` (nDCG@10) and the CLI's columns."""
        qids, per = per_query_scores(self.qrels, run, self.ks)
        metrics = {m: MetricItems("mean", np.asarray(per[m])) for m in self.columns if m in per}
        return ItemScores(qids, {"main_score": MetricItems("mean", np.asarray(per["ndcg_at_10"])), **metrics})

    def _evaluate(self, embed: Embed) -> tuple[dict[str, float], ItemScores | None]:
        run = self.rank(*self.encode(embed))
        return self.score_run(run), self.items_of_run(run)
