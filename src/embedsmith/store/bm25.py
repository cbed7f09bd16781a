"""What both backends share about BM25: what a record offers to it, the stopwords, and the query check.

The embedded store scores from a term-document matrix (:mod:`.lexical`); PostgreSQL in SQL over
``to_tsvector('english')`` (:mod:`.pgvector`). SQLite FTS5, used before, is gone from the schema (format 4).
"""

from __future__ import annotations

import re

from ..errors import InvalidInputError

# What bm25 reads: a record's index_text (e.g. a chunk with its document title in front) or its text.
INDEXED = "COALESCE(index_text, text)"

# A common English stopword list (the words bm25s and Lucene drop), trimmed to what matters for ranking.
STOPWORDS = frozenset(
    """a about above after again against all am an and any are as at be because been before being below
    between both but by can could did do does doing down during each few for from further had has have having
    he her here hers herself him himself his how i if in into is it its itself just me more most my myself no
    nor not now of off on once only or other our ours ourselves out over own same she should so some such
    than that the their theirs them themselves then there these they this those through to too under until up
    very was we were what when where which while who whom why will with would you your yours yourself
    yourselves""".split()
)
_WORD = re.compile(r"\w+", re.UNICODE)


def query_terms(query: str) -> list[str]:
    """Lower-cased words of a query without stopwords (all words if every one is a stopword)."""
    words = [w.lower() for w in _WORD.findall(query)]
    kept = [w for w in words if w not in STOPWORDS]
    return list(dict.fromkeys(kept or words))


def match_expression(query: str) -> str:
    """An FTS5 MATCH expression: quoted terms joined by OR.

    Raises:
        InvalidInputError: the query is empty or has no word characters.
    """
    if not isinstance(query, str) or not query.strip():
        raise InvalidInputError("query is empty")
    terms = query_terms(query)
    if not terms:
        raise InvalidInputError(f"query {query!r} has no searchable words for bm25")
    return " OR ".join('"' + t.replace('"', '""') + '"' for t in terms)
