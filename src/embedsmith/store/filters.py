"""Metadata filters (a subset of MongoDB's query language, as Chroma uses) compiled to SQLite or PostgreSQL SQL.

    {"lang": "en"}                                  equality
    {"year": {"$gte": 2000, "$lt": 2010}}           numeric ranges ($gt, $gte, $lt, $lte)
    {"tag": {"$in": ["a", "b"]}}, {"tag": {"$nin": [...]}}, {"tag": {"$ne": "x"}}
    {"source": {"$exists": true}}
    {"$and": [...]}, {"$or": [...]}                 several keys at one level are joined by AND

Fields are top-level metadata keys, any Unicode except ``"``. On PostgreSQL (``jsonb``) equality is JSON
equality: ``True`` matches ``true`` only, where SQLite's ``json_extract`` also matches ``1``; range operators
compare numbers only (texts never match a range on either backend; SQLite reads booleans as 1 and 0 in a
range, PostgreSQL leaves them out).

One walker checks and compiles a filter; each backend supplies the SQL of one field condition.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import FilterTooComplexError, InvalidInputError
from .validate import check_metadata_key, check_string

Where = dict[str, Any]
_COMPARE = {"$eq": "=", "$ne": "!=", "$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
_OPERATORS = (*_COMPARE, "$in", "$nin", "$exists")
_SCALAR = (str, int, float, bool)
MAX_CONDITIONS = 256  # field conditions in one filter (SQLite's parser stops at an expression depth of 1000)
MAX_VALUES = 10_000  # values in all $in / $nin lists of one filter
MAX_DEPTH = 16  # nesting of $and / $or


@dataclass(frozen=True)
class CompiledFilter:
    """A checked filter as a SQL boolean expression over a row's ``metadata`` and its parameters.

    ``sql`` is None when there is no filter (every row passes).
    """

    sql: str | None = None
    params: tuple[Any, ...] = ()
    # Ways an index on metadata fields can narrow the filter's rows: each a set of fields that, all indexed,
    # let the database find the matching rows without reading the others (see :func:`narrowing`).
    narrow: tuple[frozenset[str], ...] = ()

    def narrowed_by(self, indexed: frozenset[str] | set[str]) -> bool:
        """Whether indexes on ``indexed`` fields let the database find this filter's rows without a scan."""
        return any(option <= indexed for option in self.narrow)

    @property
    def matches_all(self) -> bool:
        return self.sql is None

    def and_sql(self) -> str:
        """`` AND (<filter>)`` to append to a WHERE clause, or nothing."""
        return "" if self.sql is None else f" AND ({self.sql})"


NO_FILTER = CompiledFilter()
Condition = Callable[[str, Any, list[Any]], str]


def sqlite_json_path(field: str) -> str:
    """A SQL string literal of the JSON path ``$."field"`` that SQLite compares with stored keys.

    Stored JSON keeps UTF-8 as is and escapes what JSON must (``\\``, control characters); SQLite 3.40 compares
    a quoted path label with the key's raw JSON text, so the label is the key as ``json.dumps`` writes it. The
    path is a literal, not a bound parameter, so an expression index on it can serve the filter.
    """
    check_metadata_key(field, "filter")
    label = json.dumps(field, ensure_ascii=False)[1:-1]
    return "'" + ('$."' + label + '"').replace("'", "''") + "'"


def _field(name: Any) -> str:
    if not isinstance(name, str) or not name or name.startswith("$"):
        raise InvalidInputError(f"unknown filter operator or bad field name {name!r}; operators: $and, $or, "
                                + ", ".join(_OPERATORS))
    return check_metadata_key(name, "filter")


def _scalar(v: Any, field: str) -> Any:
    if isinstance(v, _SCALAR):
        if isinstance(v, str):
            check_string(v, f"filter value for {field!r}")
        if isinstance(v, float) and not math.isfinite(v):
            raise InvalidInputError(f"filter value for {field!r} must be a finite number, got {v!r}")
        _in_int64(v, f"filter value for {field!r}")
        return v
    raise InvalidInputError(f"filter value for {field!r} must be a string, number or bool, got {v!r}")


def _number(op: str, arg: Any, field: str) -> Any:
    if isinstance(arg, bool) or not isinstance(arg, (int, float)) or not math.isfinite(arg):
        raise InvalidInputError(f"{op} on {field!r} needs a finite number, got {arg!r}")
    _in_int64(arg, f"{op} on {field!r}")
    return arg


def _in_int64(v: Any, what: str) -> None:
    """Integers must fit 64 bits: SQLite binds no larger ones (and stores them as floats in JSON)."""
    if isinstance(v, int) and not isinstance(v, bool) and not -(2**63) <= v < 2**63:
        raise InvalidInputError(f"{what}: the integer {v} is outside the 64-bit range; write it as a float")


def _values(op: str, arg: Any, field: str) -> list[Any]:
    if not isinstance(arg, (list, tuple)) or not arg:
        raise InvalidInputError(f"{op} on {field!r} needs a non-empty list, got {arg!r}")
    return [_scalar(a, field) for a in arg]


def _unknown(op: Any, field: str) -> InvalidInputError:
    return InvalidInputError(f"unknown filter operator {op!r} on {field!r}; expected one of: " + ", ".join(_OPERATORS))


# -- SQLite ------------------------------------------------------------------------------------------------
def _sqlite_value(v: Any) -> Any:
    return int(v) if isinstance(v, bool) else v  # json_extract returns JSON true/false as 1/0


def _condition_sqlite(field: str, spec: Any, params: list[Any]) -> str:
    col = f"json_extract(metadata, {sqlite_json_path(field)})"
    if not isinstance(spec, dict):
        params.append(_sqlite_value(_scalar(spec, field)))
        return f"{col} = ?"
    if not spec:
        raise InvalidInputError(f"empty condition for field {field!r}")
    parts = []
    for op, arg in spec.items():
        if op in ("$gt", "$gte", "$lt", "$lte"):
            # SQLite orders every text above every number, so a lower bound alone would match texts: an upper
            # bound of '' (the least text) keeps them out, as PostgreSQL's type check does, and stays a range
            # the field's expression index answers by itself (json_type would read every matching row).
            params.append(_number(op, arg, field))
            bound = f" AND {col} < ''" if op in ("$gt", "$gte") else ""
            parts.append(f"({col} {_COMPARE[op]} ?{bound})")
        elif op == "$eq":
            params.append(_sqlite_value(_scalar(arg, field)))
            parts.append(f"{col} = ?")
        elif op == "$ne":  # rows without the field match $ne, as in MongoDB
            params.append(_sqlite_value(_scalar(arg, field)))
            parts.append(f"({col} IS NULL OR {col} != ?)")
        elif op in ("$in", "$nin"):
            values = [_sqlite_value(v) for v in _values(op, arg, field)]
            params += values
            marks = ", ".join("?" for _ in values)
            parts.append(f"{col} IN ({marks})" if op == "$in" else f"({col} NOT IN ({marks}) OR {col} IS NULL)")
        elif op == "$exists":
            parts.append(f"{col} IS {'NOT ' if arg else ''}NULL")
        else:
            raise _unknown(op, field)
    return " AND ".join(parts)


# -- PostgreSQL --------------------------------------------------------------------------------------------
def _contains(field: str, value: Any, params: list[Any]) -> str:
    params.append(json.dumps({field: _scalar(value, field)}, ensure_ascii=False))
    return "metadata @> %s::jsonb"


def _condition_pg(field: str, spec: Any, params: list[Any]) -> str:
    # Equality and $in are containment (metadata @> '{"k": v}') so the GIN index can serve them.
    if not isinstance(spec, dict):
        return _contains(field, spec, params)
    if not spec:
        raise InvalidInputError(f"empty condition for field {field!r}")
    parts = []
    for op, arg in spec.items():
        if op == "$eq":
            parts.append(_contains(field, arg, params))
        elif op == "$ne":
            parts.append("NOT " + _contains(field, arg, params))  # rows without the field match, as in MongoDB
        elif op in ("$gt", "$gte", "$lt", "$lte"):
            # jsonb orders values of different types by type; the type check keeps strings out of ranges.
            params.append(json.dumps(_number(op, arg, field)))
            col = pg_field(field)
            parts.append(f"(jsonb_typeof({col}) = 'number' AND {col} {_COMPARE[op]} %s::jsonb)")
        elif op in ("$in", "$nin"):
            alternatives = " OR ".join(_contains(field, a, params) for a in _values(op, arg, field))
            parts.append(f"({alternatives})" if op == "$in" else f"NOT ({alternatives})")
        elif op == "$exists":
            params.append(field)
            parts.append(f"COALESCE(metadata -> %s, 'null'::jsonb) {'<>' if arg else '='} 'null'::jsonb")
        else:
            raise _unknown(op, field)
    return " AND ".join(parts)


def pg_field(field: str) -> str:
    """``metadata -> 'field'`` with the key as a literal (``%`` doubled for psycopg), so that an expression
    index on it (:meth:`Collection.create_index`) can serve range filters, which it cannot for a bound key."""
    check_metadata_key(field, "filter")
    return "(metadata -> '" + field.replace("'", "''").replace("%", "%%") + "')"


# -- the walker --------------------------------------------------------------------------------------------
class _Budget:
    def __init__(self) -> None:
        self.conditions = 0
        self.values = 0

    def spend(self, spec: Any) -> None:
        ops = spec.items() if isinstance(spec, dict) else [("$eq", spec)]
        for op, arg in ops:
            self.conditions += 1
            if op in ("$in", "$nin") and isinstance(arg, (list, tuple)):
                self.values += len(arg)
        if self.conditions > MAX_CONDITIONS:
            raise FilterTooComplexError(
                f"filter has {self.conditions} conditions or more; at most {MAX_CONDITIONS} are allowed "
                "(a list of alternatives for one field is one $in)"
            )
        if self.values > MAX_VALUES:
            raise FilterTooComplexError(f"filter lists {self.values} values or more in $in/$nin; at most "
                                        f"{MAX_VALUES} are allowed")


def _walk(where: Any, params: list[Any], condition: Condition, budget: _Budget, depth: int) -> str:
    if depth > MAX_DEPTH:
        raise FilterTooComplexError(f"filter nests $and/$or deeper than {MAX_DEPTH} levels")
    if not isinstance(where, dict) or not where:
        raise InvalidInputError(f"a filter must be a non-empty JSON object, got {where!r}")
    parts = []
    for key, spec in where.items():
        if key in ("$and", "$or"):
            if not isinstance(spec, list) or not spec:
                raise InvalidInputError(f"{key} needs a non-empty list of filters, got {spec!r}")
            joiner = " AND " if key == "$and" else " OR "
            parts.append("(" + joiner.join(_walk(s, params, condition, budget, depth + 1) for s in spec) + ")")
        else:
            field = _field(key)
            budget.spend(spec)
            parts.append("(" + condition(field, spec, params) + ")")
    return " AND ".join(parts)


_NARROWING = frozenset(("$eq", "$in", "$gt", "$gte", "$lt", "$lte"))  # operators an index on the field serves


def narrowing(where: Any) -> tuple[frozenset[str], ...]:
    """For a checked filter, the sets of fields whose indexes can find its rows: a field's condition of
    equality, ``$in`` or ranges needs that field; one term of an AND is enough; an OR needs all its branches
    (each by its smallest option). ``$ne``, ``$nin`` and ``$exists`` match rows without the field, which an
    index on it does not hold."""
    options: list[frozenset[str]] = []
    for key, spec in where.items():
        if key == "$and":
            options += [o for s in spec for o in narrowing(s)]
        elif key == "$or":
            branches = [narrowing(s) for s in spec]
            if all(branches):
                options.append(frozenset().union(*(min(b, key=len) for b in branches)))
        elif not isinstance(spec, dict) or (spec and set(spec) <= _NARROWING):
            options.append(frozenset((key,)))
    return tuple(dict.fromkeys(options))


def _compile(where: Where | None, condition: Condition) -> CompiledFilter:
    if where is None:
        return NO_FILTER
    params: list[Any] = []
    sql = _walk(where, params, condition, _Budget(), 0)
    return CompiledFilter(sql, tuple(params), narrowing(where))


def compile_where(where: Where | None) -> CompiledFilter:
    """Compile a filter for SQLite (``?`` parameters, literal JSON paths).

    Raises:
        InvalidInputError: an unknown operator, a bad value or a malformed clause (named in the message).
        FilterTooComplexError: more conditions or nesting than :data:`MAX_CONDITIONS` / :data:`MAX_DEPTH`.
    """
    return _compile(where, _condition_sqlite)


def compile_where_pg(where: Where | None) -> CompiledFilter:
    """Compile a filter for PostgreSQL over a ``metadata jsonb`` column (``%s`` parameters). Raises as
    :func:`compile_where`."""
    return _compile(where, _condition_pg)


__all__ = ["MAX_CONDITIONS", "MAX_DEPTH", "MAX_VALUES", "NO_FILTER", "CompiledFilter", "Where", "compile_where",
           "compile_where_pg", "narrowing", "pg_field", "sqlite_json_path"]
