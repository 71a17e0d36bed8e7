"""JSON schemas as compact grammars: integer ranges exactly, and documents the real engine generates
under them (a random model, sampled hot) that always parse and validate, with no free whitespace."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

from ovchat.grammar import Unsupported, int_range, regex_to_ebnf, schema_to_ebnf


def as_regex(expr: str) -> str:
    """The EBNF of int_range (literals, classes, groups, alternation, counts) as a Python regex."""
    out, i = [], 0
    while i < len(expr):
        if expr[i] == '"':
            end = expr.index('"', i + 1)
            out.append(re.escape(expr[i + 1 : end]))
            i = end + 1
        elif expr[i] == " ":
            i += 1
        else:
            out.append(expr[i])
            i += 1
    return "".join(out)


@pytest.mark.parametrize(("low", "high"), [(0, 9), (3, 9), (-5, 5), (-120, -7), (0, 1000), (17, 2345),
                                           (-1000, 1000), (99, 101), (5, 5), (-3, -3), (10, 99), (1, 14)])
def test_integer_ranges_are_exact(low, high):
    pattern = re.compile(as_regex(int_range(low, high)))
    for n in range(low - 200, high + 201):
        assert bool(pattern.fullmatch(str(n))) == (low <= n <= high), n
    assert not pattern.fullmatch("0" + str(abs(high))) and not pattern.fullmatch("-0")


SCHEMAS = [
    {"type": "object", "properties": {"a": {"type": "string", "maxLength": 8}, "b": {"type": "integer"},
                                      "c": {"type": "boolean"}}, "required": ["b"]},
    {"type": "object", "properties": {"when": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"},
                                      "who": {"type": ["string", "null"], "maxLength": 6}},
     "required": ["when", "who"]},
    {"type": "object", "properties": {"n": {"type": "integer", "minimum": -20, "exclusiveMaximum": 40},
                                      "x": {"type": "number", "minimum": 0}, "y": {"type": "number",
                                                                                    "exclusiveMinimum": 0},
                                      "z": {"type": "number"}}, "required": ["n", "x", "y", "z"]},
    {"type": "object", "properties": {"items": {"type": "array", "items": {"type": "object", "properties": {
        "sku": {"enum": ["a1", "b2", 3, None, True]}, "qty": {"type": "integer", "minimum": 1, "maximum": 99}},
        "required": ["sku", "qty"], "additionalProperties": False}, "minItems": 2, "maxItems": 4}},
     "required": ["items"]},
    {"type": "object", "properties": {"kind": {"const": "circle"}, "shape": {"anyOf": [
        {"type": "object", "properties": {"r": {"type": "integer", "minimum": 1, "maximum": 9}}, "required": ["r"]},
        {"type": "string", "minLength": 2, "maxLength": 4}]}}, "required": ["kind", "shape"]},
    {"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string", "pattern": "[a-z]{1,5}"},
                                               "maxItems": 3},
                                      "meta": {"type": "object", "additionalProperties": {"type": "integer",
                                                                                         "minimum": 0,
                                                                                         "maximum": 9}},
                                      "none": {"type": "object", "properties": {}}},
     "required": ["tags", "meta", "none"]},
    {"type": "object", "properties": {"code": {"type": "string", "pattern": r"^(ab|cd)+-\d{2,3}\.x?$"},
                                      "any": {}}, "required": ["code", "any"]},
]


@pytest.fixture(scope="module")
def long_model(tiny_phi3_long_ov):
    import ovchat

    return ovchat.load(str(tiny_phi3_long_ov))


@pytest.mark.parametrize("index", range(len(SCHEMAS)))
def test_generated_documents_validate(long_model, index):
    schema = SCHEMAS[index]
    grammar = schema_to_ebnf(schema)
    for seed in range(4):
        text = long_model.generate(f"Write JSON ({seed}).", grammar=grammar, max_new_tokens=400, temperature=1.0,
                                   seed=seed)
        document = json.loads(text)  # whole: the grammar ends where the document does
        assert not re.search(r"[\n\t]|  ", text.replace("\\n", "")), text  # no free whitespace
        if "\ufffd" in text:
            # The random model wrote a byte that is not UTF-8 (it decodes to U+FFFD, which a maxLength
            # may count differently): the document still parses; its length bounds are not judged.
            continue
        jsonschema.validate(document, schema)


@pytest.mark.parametrize("pattern", [r"^[A-Z]{3}$", r"\d{2,4}-\d+", r"(ab|cd)+x?", r"[^a-z]{1,3}", r"a.b",
                                     r"^\w+@\w+\.com$", r"[a-c\-]{2}\s\.?"])
def test_patterns_generate_matching_strings(long_model, pattern):
    grammar = f'root ::= "\\"" {regex_to_ebnf(pattern)} "\\""'
    for seed in range(3):
        text = long_model.generate("Write.", grammar=grammar, max_new_tokens=200, temperature=1.0, seed=seed)
        value = json.loads(text)
        assert re.search(pattern, value), (pattern, value)


@pytest.mark.parametrize("schema", [
    {"oneOf": [{"type": "string"}, {"type": "integer"}]},  # exactly one: not what a grammar checks
    {"allOf": [{"type": "object"}]},
    {"type": "number", "maximum": 5},
    {"type": "integer", "minimum": 1.5, "maximum": 1.7},  # no integer fits
    {"type": "integer", "multipleOf": 3},
    {"type": "array", "uniqueItems": True},
    {"type": "string", "pattern": "(?=a)b"},
    {"type": "string", "pattern": r"[\"]"},
    {"type": "string", "format": "date", "pattern": "a", "maxLength": 3},
    {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["b"]},
    {"type": "thing"},
    {"minimum": 3},
])
def test_what_the_grammar_cannot_say_is_unsupported(schema):
    with pytest.raises(Unsupported):
        schema_to_ebnf(schema)
