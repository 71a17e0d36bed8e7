"""JSON schemas checked before they reach the grammar compiler: its errors surface only once generation
starts (and would cost the batch a step), so what it cannot build is refused up front, naming where."""

from __future__ import annotations

import re
from typing import Any

from .api_error import ApiError

_TYPES = {"string", "number", "integer", "boolean", "object", "array", "null"}
_BOUNDS = (
    ("minLength", "maxLength"),
    ("minItems", "maxItems"),
    ("minimum", "maximum"),
    ("minProperties", "maxProperties"),
)
_COUNTS = ("minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties")
# Regex syntax the grammar compiler does not take (lookaround, named groups, backreferences).
_UNSUPPORTED_REGEX = re.compile(r"\(\?(?!:)|\\[1-9]|\\k<")
MAX_SCHEMA_DEPTH = 32


def check_json_schema(schema: Any, where: str) -> None:
    """Refuse what the grammar compiler cannot build. Its errors surface only once generation starts,
    so they are caught here: types, patterns, bounds, references, empty enums, false schemas."""
    _check_schema(schema, where, schema, 0)


def _check_schema(schema: Any, where: str, root: Any, depth: int) -> None:
    def refuse(message: str) -> None:
        raise ApiError(400, f"{where}{message}", where)

    if depth > MAX_SCHEMA_DEPTH:
        refuse(f": nested deeper than {MAX_SCHEMA_DEPTH} levels")
    if schema is False:
        refuse(": a false schema accepts nothing")
    if schema is True:
        return
    if not isinstance(schema, dict):
        refuse(": a schema must be an object or a boolean")
    types = schema.get("type")
    for name in types if isinstance(types, list) else [types] if types is not None else []:
        if name not in _TYPES:
            refuse(f".type: unknown type {name!r}")
    if "pattern" in schema:
        pattern = schema["pattern"]
        try:
            re.compile(pattern)
        except (re.error, TypeError) as exc:
            refuse(f".pattern: not a valid regular expression ({exc})")
        if _UNSUPPORTED_REGEX.search(pattern):
            refuse(".pattern: lookaround, named groups and backreferences are not supported")
    for name in _COUNTS:
        if name in schema and not (isinstance(schema[name], int) and schema[name] >= 0):
            refuse(f".{name}: must be a non-negative integer")
    for low, high in _BOUNDS:
        lo, hi = schema.get(low), schema.get(high)
        if isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and lo > hi:
            refuse(f": {low} {lo} is greater than {high} {hi}")
    if "enum" in schema and not (isinstance(schema["enum"], list) and schema["enum"]):
        refuse(".enum: must be a non-empty list")
    if isinstance(schema.get("items"), list):
        refuse(".items: a list of schemas is the old tuple form; use prefixItems")
    if "$ref" in schema:
        _resolve(schema["$ref"], root, where)
    for key, value in schema.items():
        if key in ("properties", "patternProperties", "$defs", "definitions") and isinstance(value, dict):
            for name, sub in value.items():
                _check_schema(sub, f"{where}.{key}.{name}", root, depth + 1)
        elif key in ("items", "additionalProperties", "not", "if", "then", "else", "contains") and isinstance(
            value, dict
        ):
            _check_schema(value, f"{where}.{key}", root, depth + 1)
        elif key in ("anyOf", "oneOf", "allOf", "prefixItems") and isinstance(value, list):
            for i, sub in enumerate(value):
                _check_schema(sub, f"{where}.{key}[{i}]", root, depth + 1)


def _resolve(ref: Any, root: Any, where: str) -> None:
    """A $ref must point inside this schema, at something that exists."""
    if not isinstance(ref, str) or not ref.startswith("#"):
        raise ApiError(400, f"{where}.$ref: only references inside the schema (#/...) are supported", where)
    node = root
    for part in [p for p in ref[1:].split("/") if p]:
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or part not in node:
            raise ApiError(400, f"{where}.$ref: {ref!r} points at nothing in the schema", where)
        node = node[part]
