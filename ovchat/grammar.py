"""JSON schemas as compact grammars: no free whitespace, bounded numbers, for constrained generation.

OpenVINO GenAI compiles a JSON schema with XGrammar's defaults, which allow any run of whitespace
between JSON tokens; a small model can spend its whole budget on newlines there and never close
the object. The tool-call schemas are instead written here as an EBNF grammar (the dialect GenAI's
`StructuredOutputConfig(grammar=...)` takes) that allows one optional space after ":" and ",",
nothing else between tokens, and caps free-running digits. Every document it admits validates
against the schema. A schema using something not covered raises `Unsupported`, and the caller
falls back to the JSON schema itself.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

INT_DIGITS = 15  # digits of an unbounded integer: a bound on free-running generation, not on meaning
FRACTION_DIGITS = 15
# Where a schema leaves everything open (any value, an object's own keys), strings are capped too:
# a subset of what the schema allows, and an end to a small model's rambling.
FREE_KEY_CHARS = 64
FREE_STRING_CHARS = 256
# Keywords that describe a value without constraining it.
ANNOTATIONS = {"title", "description", "default", "examples", "$schema", "$id", "$comment", "deprecated",
               "readOnly", "writeOnly", "format", "contentMediaType", "contentEncoding", "strict"}
TYPE_KEYWORDS = {
    "object": {"properties", "required", "additionalProperties"},
    "array": {"items", "minItems", "maxItems"},
    "string": {"minLength", "maxLength", "pattern"},
    "integer": {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"},
    "number": {"minimum", "exclusiveMinimum"},
    "boolean": set(),
    "null": set(),
}
# A character a JSON string holds as it is, as XGrammar's own JSON grammar writes it. (Listing the
# non-ASCII ranges instead made XGrammar accept a byte sequence outside them and then anything at all.)
# A byte-level model may still write a byte that is not UTF-8 there; it decodes to U+FFFD.
JSON_CHAR = r'[^"\\\x00-\x1f]'
ESCAPE = r'"\\" ["\\/bfnrt]'


class Unsupported(ValueError):
    """The schema uses something this grammar does not express."""


def schema_to_ebnf(schema: Any) -> str:
    return framed_ebnf([("", schema, "")], "", 1)


def framed_ebnf(frames: Sequence[tuple[str, Any, str]], separator: str, most: int, opening: str = "",
                closing: str = "") -> str:
    """One to `most` values joined by `separator`, each `before` + a value of its schema + `after` for
    one of `frames` (a template's tool calls: "<tool_call>\n{"name": "f", "arguments": " ... "}\n</tool_call>"),
    the whole between `opening` and `closing` (a list of calls: "functools[" ... "]")."""
    builder = RuleBuilder()
    try:
        options = [" ".join(p for p in (literal(a), builder.value(schema), literal(b)) if p != '""')
                   for a, schema, b in frames]
    except (TypeError, AttributeError, KeyError) as exc:  # a keyword's value of an unexpected type
        raise Unsupported(str(exc)) from None
    one = options[0] if len(options) == 1 else builder.rule("(" + " | ".join(options) + ")", "frame")
    root = one if most <= 1 else f"{one} ({literal(separator)} {one}){{0,{most - 1}}}"
    root = " ".join(part for part in (literal(opening), root, literal(closing)) if part != '""')
    return builder.grammar(root)


LITERAL_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n"}


def literal(text: str) -> str:
    """An EBNF string literal for `text`."""
    escaped = (LITERAL_ESCAPES.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x20 else c) for c in text)
    return '"' + "".join(escaped) + '"'


class RuleBuilder:
    """Named EBNF rules for JSON values (one per distinct body), and the grammar they make with a root."""

    def __init__(self):
        self.rules: dict[str, str] = {"sp": '" "?'}  # the one space allowed after ":" and ","
        self._names: dict[str, str] = {}

    def grammar(self, root: str) -> str:
        """The whole grammar: `root` and every rule made so far."""
        return "\n".join([f"root ::= {root}", *(f"{name} ::= {body}" for name, body in self.rules.items())])

    def rule(self, body: str, hint: str) -> str:
        """A named rule for `body` (one per distinct body)."""
        if body in self._names:
            return self._names[body]
        name = f"{hint}{len(self.rules)}"
        self.rules[name] = body
        self._names[body] = name
        return name

    def value(self, schema: Any) -> str:
        if schema is True or schema == {}:
            return self.any_value()
        if not isinstance(schema, dict):
            raise Unsupported(f"a schema {schema!r}")
        keys = set(schema) - ANNOTATIONS
        if "const" in schema:
            return literal(json.dumps(schema["const"], ensure_ascii=False))
        if "enum" in schema:
            return "(" + " | ".join(literal(json.dumps(v, ensure_ascii=False)) for v in schema["enum"]) + ")"
        for key in ("anyOf", "oneOf"):
            if key in schema:
                if keys - {key}:
                    raise Unsupported(f"{key} beside other keywords")
                if key == "oneOf" and len(schema[key]) > 1:
                    raise Unsupported("oneOf of several schemas")  # exactly one must match: not checked here
                return "(" + " | ".join(self.value(sub) for sub in schema[key]) + ")"
        kind = schema.get("type")
        if kind is None:
            kind = "object" if "properties" in keys else "array" if "items" in keys else None
            if kind is None:
                if keys:
                    raise Unsupported(f"keywords {sorted(keys)} without a type")
                return self.any_value()
        kinds = kind if isinstance(kind, list) else [kind]
        options = []
        for name in kinds:
            allowed = TYPE_KEYWORDS.get(name)
            if allowed is None:
                raise Unsupported(f"type {name!r}")
            extra = keys - {"type"} - set().union(*(TYPE_KEYWORDS[k] for k in kinds if k in TYPE_KEYWORDS))
            if extra:
                raise Unsupported(f"keywords {sorted(extra)}")
            options.append(getattr(self, f"_{name}")(schema))
        return options[0] if len(options) == 1 else "(" + " | ".join(options) + ")"

    # -- types ---------------------------------------------------------------------------------------
    def _object(self, schema: dict) -> str:
        properties = schema.get("properties")
        extra = schema.get("additionalProperties", True)
        if properties == {}:
            return '"{}"'  # declared to have none (a tool without arguments)
        if properties is None:
            if extra is False:
                return '"{}"'
            return self.any_object(self.value(extra) if isinstance(extra, dict) else self.any_value())
        required = set(schema.get("required", []))
        missing = required - set(properties)
        if missing:
            raise Unsupported(f"required properties without a schema: {sorted(missing)}")
        members = [
            f"{literal(json.dumps(name, ensure_ascii=False))} \":\" sp {self.value(sub)}"
            for name, sub in properties.items()
        ]
        flags = [name in required for name in properties]
        # after[i]: members i.. when one is already written (each then starts with a comma);
        # first[i]: the same when none is written yet. Declared order, every required one present.
        after, first = ['""'], ['""']
        for member, needed in zip(reversed(members), reversed(flags)):  # noqa: B905
            tail_after, tail_first = after[-1], first[-1]
            with_comma = f'"," sp {member} {tail_after}'
            after.append(self.rule(with_comma if needed else f"({with_comma} | {tail_after})", "members"))
            first.append(self.rule(f"{member} {tail_after}" if needed else f"({member} {tail_after} | {tail_first})",
                                   "members"))
        return self.rule(f'"{{" {first[-1]} "}}"', "object")

    def _array(self, schema: dict) -> str:
        item = self.value(schema.get("items", True))
        low, high = schema.get("minItems", 0), schema.get("maxItems")
        if high == 0:
            return '"[]"'
        more_low, more_high = max(low - 1, 0), None if high is None else high - 1
        repeat = "{" + f"{more_low}," + ("" if more_high is None else str(more_high)) + "}"
        items = f'{item} ("," sp {item}){repeat}'
        return self.rule(f'"[" {items} "]"' if low > 0 else f'"[" ({items})? "]"', "array")

    def _string(self, schema: dict) -> str:
        if "pattern" in schema:
            if "minLength" in schema or "maxLength" in schema:
                raise Unsupported("pattern with length bounds")
            return self.rule(f'"\\"" {regex_to_ebnf(schema["pattern"])} "\\""', "pattern")
        low, high = schema.get("minLength", 0), schema.get("maxLength")
        char = self.rule(f"{JSON_CHAR} | {ESCAPE}", "char")
        repeat = "*" if low == 0 and high is None else "{" + f"{low}," + ("" if high is None else str(high)) + "}"
        return self.rule(f'"\\"" {char}{repeat} "\\""', "string")

    def _integer(self, schema: dict) -> str:
        low = -(10**INT_DIGITS - 1)
        high = 10**INT_DIGITS - 1
        if "minimum" in schema:
            low = max(low, _ceil(schema["minimum"]))
        if "exclusiveMinimum" in schema:
            low = max(low, _floor(schema["exclusiveMinimum"]) + 1)
        if "maximum" in schema:
            high = min(high, _floor(schema["maximum"]))
        if "exclusiveMaximum" in schema:
            high = min(high, _ceil(schema["exclusiveMaximum"]) - 1)
        if low > high:
            raise Unsupported("an empty integer range")
        return self.rule(int_range(low, high), "integer")

    def _number(self, schema: dict) -> str:
        low = schema.get("minimum", schema.get("exclusiveMinimum"))
        if low is not None and low != 0:
            raise Unsupported("number bounds other than a minimum of 0")
        strict = "exclusiveMinimum" in schema
        whole = f"(\"0\" | [1-9] [0-9]{{0,{INT_DIGITS - 1}}})"
        fraction = f'("." [0-9]{{1,{FRACTION_DIGITS}}})?'
        if low is None:
            return self.rule(f'"-"? {whole} {fraction}', "number")
        if strict:  # above 0: a whole part from 1, or 0 with a fraction that is not all zeros
            return self.rule(f'([1-9] [0-9]{{0,{INT_DIGITS - 1}}} {fraction} | "0." [0-9]{{0,{FRACTION_DIGITS - 1}}} '
                             f"[1-9])", "number")
        return self.rule(f"{whole} {fraction}", "number")

    def _boolean(self, schema: dict) -> str:
        return '("true" | "false")'

    def _null(self, schema: dict) -> str:
        return '"null"'

    # -- any JSON --------------------------------------------------------------------------------------
    def any_value(self) -> str:
        if "value" not in self.rules:
            string = self._string({"maxLength": FREE_STRING_CHARS})
            number = self._number({})
            self.rules["value"] = f'(anyobject | anyarray | {string} | {number} | "true" | "false" | "null")'
            self.rules["anyobject"] = f'"{{" ({string} ":" sp value ("," sp {string} ":" sp value)*)? "}}"'
            self.rules["anyarray"] = '"[" (value ("," sp value)*)? "]"'
        return "value"

    def any_object(self, value: str) -> str:
        string = self._string({"maxLength": FREE_KEY_CHARS})
        return self.rule(f'"{{" ({string} ":" sp {value} ("," sp {string} ":" sp {value})*)? "}}"', "object")


def _floor(x: float) -> int:
    return int(x // 1)


def _ceil(x: float) -> int:
    return -int(-x // 1)


def int_range(low: int, high: int) -> str:
    """EBNF for the integers low..high written as JSON writes them."""
    parts = []
    if low < 0:
        parts.append('"-" ' + _natural_range(max(-high, 1), -low))
    if high >= 0:
        parts.append(_natural_range(max(low, 0), high))
    return "(" + " | ".join(parts) + ")"


def _natural_range(low: int, high: int) -> str:
    """0 <= low <= high, without leading zeros."""
    parts = []
    for digits in range(len(str(low)), len(str(high)) + 1):
        start = max(low, 10 ** (digits - 1) if digits > 1 else 0)
        end = min(high, 10**digits - 1)
        if start <= end:
            parts.append(_same_length(str(start), str(end)))
    return "(" + " | ".join(parts) + ")"


def _same_length(low: str, high: str) -> str:
    if low == high:
        return literal(low)
    if set(low) == {"0"} and set(high) == {"9"}:  # every digit free (keeps this linear in the length)
        return f"[0-9]{{{len(low)}}}"
    if len(low) == 1:
        return f"[{low}-{high}]"
    if low[0] == high[0]:
        return f"{literal(low[0])} {_same_length(low[1:], high[1:])}"
    rest = len(low) - 1
    parts = [f"{literal(low[0])} {_same_length(low[1:], '9' * rest)}"]
    if int(high[0]) - int(low[0]) > 1:
        parts.append(f"[{int(low[0]) + 1}-{int(high[0]) - 1}] [0-9]{{{rest}}}")
    parts.append(f"{literal(high[0])} {_same_length('0' * rest, high[1:])}")
    return "(" + " | ".join(parts) + ")"


# -- patterns --------------------------------------------------------------------------------------------
_CLASS_ESCAPES = {"d": "0-9", "w": "a-zA-Z0-9_", "s": " "}  # \s: a space (a tab would need escaping)


def regex_to_ebnf(pattern: str) -> str:
    """A JSON-schema pattern (ECMA regex) as EBNF matching whole strings it matches, with JSON's escaping.
    Anchors are dropped (a string that matches whole also contains a match); features beyond
    literals, classes, groups, alternation and greedy quantifiers are Unsupported."""
    body = pattern[1:] if pattern.startswith("^") else pattern
    if body.endswith("$") and not body.endswith("\\$"):
        body = body[:-1]
    expr, end = _alternation(body, 0)
    if end != len(body):
        raise Unsupported(f"pattern {pattern!r}")
    return expr


def _alternation(text: str, i: int) -> tuple[str, int]:
    branches = []
    while True:
        seq, i = _sequence(text, i)
        branches.append(seq or '""')
        if i < len(text) and text[i] == "|":
            i += 1
            continue
        return (branches[0] if len(branches) == 1 else "(" + " | ".join(branches) + ")"), i


def _sequence(text: str, i: int) -> tuple[str, int]:
    items = []
    while i < len(text) and text[i] not in "|)":
        atom, i = _atom(text, i)
        quantifier = re.match(r"\*|\+|\?|\{\d+(,\d*)?\}", text[i:])
        if quantifier:
            q = quantifier.group(0)
            i += len(q)
            if i < len(text) and text[i] in "?+":
                raise Unsupported("lazy or possessive quantifiers")
            if q == "*":
                q = "{0,64}"  # bounded: a free run is where a small model loops
            elif q == "+":
                q = "{1,64}"
            elif q.startswith("{") and q.endswith(",}"):
                q = q[:-1] + str(int(q[1:-2]) + 64) + "}"
            atom = f"({atom}){q}"
        items.append(atom)
    return " ".join(items), i


def _atom(text: str, i: int) -> tuple[str, int]:
    char = text[i]
    if char == "(":
        i += 1
        if text.startswith("?:", i):
            i += 2
        elif text.startswith("?", i):
            raise Unsupported("lookaround and named groups")
        inner, i = _alternation(text, i)
        if i >= len(text) or text[i] != ")":
            raise Unsupported("an unclosed group")
        return f"({inner})", i + 1
    if char == "[":
        return _char_class(text, i)
    if char == ".":
        return JSON_CHAR, i + 1
    if char == "\\":
        if i + 1 >= len(text):
            raise Unsupported("a trailing backslash")
        code = text[i + 1]
        if code in _CLASS_ESCAPES:
            return f"[{_CLASS_ESCAPES[code]}]", i + 2
        if code.isalnum():
            raise Unsupported(f"the escape \\{code}")
        return _json_char(code), i + 2
    if char in "*+?{^$":
        raise Unsupported(f"{char!r} where a character was expected")
    return _json_char(char), i + 1


def _json_char(char: str) -> str:
    """A literal character as it appears in a JSON string."""
    return literal(json.dumps(char, ensure_ascii=False)[1:-1])


def _char_class(text: str, i: int) -> tuple[str, int]:
    end = i + 1
    if end < len(text) and text[end] == "^":
        end += 1
    if end < len(text) and text[end] == "]":
        end += 1
    while end < len(text) and text[end] != "]":
        end += 2 if text[end] == "\\" else 1
    if end >= len(text):
        raise Unsupported("an unclosed character class")
    inner = text[i + 1 : end]
    negated = inner.startswith("^")
    members, j = [], 1 if negated else 0
    while j < len(inner):
        c = inner[j]
        if c == "\\":
            code = inner[j + 1 : j + 2]
            if code in _CLASS_ESCAPES:
                members.append(_CLASS_ESCAPES[code])
            elif code in "]-^[":
                members.append("\\" + code)
            elif code.isalnum() or code in '"\\':
                raise Unsupported(f"the escape \\{code} in a class")
            else:
                members.append(code)
            j += 2
            continue
        if c in '"\\' or ord(c) < 0x20:
            raise Unsupported("quotes, backslashes or control characters in a class")
        members.append(c)
        j += 1
    body = "".join(members)
    if negated:  # also never a character JSON would have to escape
        body += '"\\\\\\x00-\\x1f'
    return f"[{'^' if negated else ''}{body}]", end + 1
