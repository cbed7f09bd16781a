"""Metadata filters (a subset of MongoDB's query language, as Chroma uses) compiled to SQLite SQL.

    {"lang": "en"}                                  equality
    {"year": {"$gte": 2000, "$lt": 2010}}           numeric ranges ($gt, $gte, $lt, $lte)
    {"tag": {"$in": ["a", "b"]}}, {"tag": {"$nin": [...]}}, {"tag": {"$ne": "x"}}
    {"source": {"$exists": true}}
    {"$and": [...]}, {"$or": [...]}                 several keys at one level are joined by AND
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
    """Compile a filter to a SQL boolean expression over the ``metadata`` JSON column, with parameters.

    Raises:
        InvalidInputError: an unknown operator, a bad value or a malformed clause (named in the message).
    """
    if where is None:
        return "1", []
    params: list[Any] = []
    return _compile(where, params), params


def _compile(where: Any, params: list[Any]) -> str:
    if not isinstance(where, dict) or not where:
        raise InvalidInputError(f"a filter must be a non-empty JSON object, got {where!r}")
    parts = []
    for key, spec in where.items():
        if key in ("$and", "$or"):
            if not isinstance(spec, list) or not spec:
                raise InvalidInputError(f"{key} needs a non-empty list of filters, got {spec!r}")
            joiner = " AND " if key == "$and" else " OR "
            parts.append("(" + joiner.join(_compile(s, params) for s in spec) + ")")
        else:
            parts.append("(" + _condition(key, spec, params) + ")")
    return " AND ".join(parts)
