"""Metadata filters (a subset of MongoDB's query language, as Chroma uses) compiled to SQLite or PostgreSQL SQL.

    {"lang": "en"}                                  equality
    {"year": {"$gte": 2000, "$lt": 2010}}           numeric ranges ($gt, $gte, $lt, $lte)
    {"tag": {"$in": ["a", "b"]}}, {"tag": {"$nin": [...]}}, {"tag": {"$ne": "x"}}
    {"source": {"$exists": true}}
    {"$and": [...]}, {"$or": [...]}                 several keys at one level are joined by AND

Fields are top-level metadata keys. On PostgreSQL (``jsonb``) equality is JSON equality: ``True`` matches
``true`` only, where SQLite's ``json_extract`` also matches ``1``; range operators compare numbers only.
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import InvalidInputError

Where = dict[str, Any]
_COMPARE = {"$eq": "=", "$ne": "!=", "$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
_OPERATORS = (*_COMPARE, "$in", "$nin", "$exists")
_SCALAR = (str, int, float, bool)


def _field(name: str) -> str:
    if not isinstance(name, str) or not name or name.startswith("$"):
        raise InvalidInputError(f"unknown filter operator or bad field name {name!r}; operators: $and, $or, "
                                + ", ".join(_OPERATORS))
    return "json_extract(metadata, ?)"


def _path(name: str) -> str:
    return "$." + json.dumps(name)


def _value(v: Any, field: str) -> Any:
    if isinstance(v, bool):
        return int(v)  # json_extract returns JSON true/false as 1/0
    if isinstance(v, _SCALAR):
        return v
    raise InvalidInputError(f"filter value for {field!r} must be a string, number or bool, got {v!r}")


def _condition(field: str, spec: Any, params: list[Any]) -> str:
    col = _field(field)
    if not isinstance(spec, dict):
        params += [_path(field), _value(spec, field)]
        return f"{col} = ?"
    if not spec:
        raise InvalidInputError(f"empty condition for field {field!r}")
    parts = []
    for op, arg in spec.items():
        if op in _COMPARE:
            if op in ("$gt", "$gte", "$lt", "$lte") and (isinstance(arg, bool) or not isinstance(arg, (int, float))):
                raise InvalidInputError(f"{op} on {field!r} needs a number, got {arg!r}")
            if op == "$ne":
                # Rows without the field match $ne, as in MongoDB.
                params += [_path(field), _path(field), _value(arg, field)]
                parts.append(f"({col} IS NULL OR {col} != ?)")
            else:
                params += [_path(field), _value(arg, field)]
                parts.append(f"{col} {_COMPARE[op]} ?")
        elif op in ("$in", "$nin"):
            if not isinstance(arg, (list, tuple)) or not arg:
                raise InvalidInputError(f"{op} on {field!r} needs a non-empty list, got {arg!r}")
            marks = ", ".join("?" for _ in arg)
            params.append(_path(field))
            params += [_value(a, field) for a in arg]
            if op == "$in":
                parts.append(f"{col} IN ({marks})")
            else:
                params.append(_path(field))
                parts.append(f"({col} NOT IN ({marks}) OR {col} IS NULL)")
        elif op == "$exists":
            params.append(_path(field))
            parts.append(f"{col} IS {'NOT ' if arg else ''}NULL")
        else:
            raise InvalidInputError(f"unknown filter operator {op!r} on {field!r}; expected one of: "
                                    + ", ".join(_OPERATORS))
    return " AND ".join(parts)


def compile_where(where: Where | None) -> tuple[str, list[Any]]:
    """Compile a filter to a SQLite boolean expression over the ``metadata`` JSON column, with parameters.

    Raises:
        InvalidInputError: an unknown operator, a bad value or a malformed clause (named in the message).
    """
    if where is None:
        return "1", []
    params: list[Any] = []
    return _compile(where, params, _condition), params


def compile_where_pg(where: Where | None) -> tuple[str, list[Any]]:
    """Compile a filter to a PostgreSQL boolean expression over a ``metadata jsonb`` column (``%s`` parameters).

    Equality and ``$in`` are written as containment (``metadata @> '{"k": v}'``) so a GIN index can serve them.

    Raises:
        InvalidInputError: as :func:`compile_where`.
    """
    if where is None:
        return "TRUE", []
    params: list[Any] = []
    return _compile(where, params, _condition_pg), params


def _pg_value(v: Any, field: str) -> Any:
    if isinstance(v, _SCALAR):
        return v
    raise InvalidInputError(f"filter value for {field!r} must be a string, number or bool, got {v!r}")


def _contains(field: str, value: Any, params: list[Any]) -> str:
    params.append(json.dumps({field: _pg_value(value, field)}, ensure_ascii=False))
    return "metadata @> %s::jsonb"


def _condition_pg(field: str, spec: Any, params: list[Any]) -> str:
    _field(field)
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
        elif op in _COMPARE:
            if isinstance(arg, bool) or not isinstance(arg, (int, float)):
                raise InvalidInputError(f"{op} on {field!r} needs a number, got {arg!r}")
            # jsonb orders values of different types by type; the type check keeps strings out of ranges.
            params += [field, field, json.dumps(arg)]
            parts.append(f"(jsonb_typeof(metadata -> %s) = 'number' AND metadata -> %s {_COMPARE[op]} %s::jsonb)")
        elif op in ("$in", "$nin"):
            if not isinstance(arg, (list, tuple)) or not arg:
                raise InvalidInputError(f"{op} on {field!r} needs a non-empty list, got {arg!r}")
            alternatives = " OR ".join(_contains(field, a, params) for a in arg)
            parts.append(f"({alternatives})" if op == "$in" else f"NOT ({alternatives})")
        elif op == "$exists":
            params.append(field)
            parts.append(f"COALESCE(metadata -> %s, 'null'::jsonb) {'<>' if arg else '='} 'null'::jsonb")
        else:
            raise InvalidInputError(f"unknown filter operator {op!r} on {field!r}; expected one of: "
                                    + ", ".join(_OPERATORS))
    return " AND ".join(parts)


def _compile(where: Any, params: list[Any], condition: Any) -> str:
    if not isinstance(where, dict) or not where:
        raise InvalidInputError(f"a filter must be a non-empty JSON object, got {where!r}")
    parts = []
    for key, spec in where.items():
        if key in ("$and", "$or"):
            if not isinstance(spec, list) or not spec:
                raise InvalidInputError(f"{key} needs a non-empty list of filters, got {spec!r}")
            joiner = " AND " if key == "$and" else " OR "
            parts.append("(" + joiner.join(_compile(s, params, condition) for s in spec) + ")")
        else:
            parts.append("(" + condition(key, spec, params) + ")")
    return " AND ".join(parts)
