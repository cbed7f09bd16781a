"""BM25 over SQLite FTS5, kept in the same transactions as the records it indexes.

FTS5's ``bm25()`` is Okapi BM25 (k1=1.2, b=0.75) over its own tokens; we use the Porter stemmer over
``unicode61`` tokens. Queries are cut into words, English stopwords dropped, each word quoted (FTS5's
query syntax rejects most punctuation) and the words joined with OR (FTS5's default is AND, which
would demand every word).
"""

from __future__ import annotations

import re

from ..errors import InvalidInputError

# What bm25 reads: a record's index_text (e.g. a chunk with its document title in front) or its text.
INDEXED = "COALESCE(index_text, text)"
SEARCH_VIEW = f"CREATE VIEW IF NOT EXISTS records_search AS SELECT seq, {INDEXED} AS text FROM records"
FTS_SCHEMA = (
    "CREATE VIRTUAL TABLE IF NOT EXISTS fts USING fts5("
    "text, content='records_search', content_rowid='seq', tokenize='porter unicode61 remove_diacritics 2')"
)
# Add/remove rows of ``records`` (by a WHERE clause over it) to/from the external-content FTS index.
INDEX_ROWS = (
    f"INSERT INTO fts(rowid, text) SELECT seq, {INDEXED} FROM records WHERE {INDEXED} IS NOT NULL AND {{where}}"
)
UNINDEX_ROWS = (
    f"INSERT INTO fts(fts, rowid, text) SELECT 'delete', seq, {INDEXED} FROM records "
    f"WHERE {INDEXED} IS NOT NULL AND {{where}}"
)

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
