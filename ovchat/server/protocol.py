"""The OpenAI request shapes ovchat serves, validated strictly: a wrong type or range is a 400 naming the field.

Unknown fields are ignored (clients send many); known fields ovchat cannot honour are refused, never
silently dropped.
"""

from __future__ import annotations

import json
import re
import secrets
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..sampling import SamplingParams


class ApiError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
        headers: dict | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None

    @model_validator(mode="after")
    def _content(self):
        if self.content is None and self.role != "assistant":
            raise ValueError(f"a {self.role} message needs content")
        return self

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class StreamOptions(_Strict):
    include_usage: bool = False


class JsonSchemaFormat(_Strict):
    name: str = "response"
    schema_: dict | bool = Field(alias="schema", default_factory=dict)
    strict: bool | None = None


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


Temperature = Annotated[float, Field(ge=0, le=2)]
TopP = Annotated[float, Field(gt=0, le=1)]
Penalty = Annotated[float, Field(ge=-2, le=2)]
MaxTokens = Annotated[int, Field(ge=1)]


class _Sampling(_Strict):
    model: str | None = None
    max_tokens: MaxTokens | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    top_k: Annotated[int, Field(ge=0, le=2**31 - 1)] | None = None  # not OpenAI's; llama-server and vLLM take it
    repetition_penalty: Annotated[float, Field(gt=0, le=10)] | None = None  # not OpenAI's either; as vLLM's
    no_repeat_ngram_size: Annotated[int, Field(ge=0, le=1024)] | None = None  # ovchat's (as transformers')
    loop_guard: bool = True  # ovchat's: end an answer that has started repeating itself
    seed: int | None = None
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    n: Annotated[int, Field(ge=1)] = 1
    logprobs: Any = None
    logit_bias: dict | None = None
    user: str | None = None

    @model_validator(mode="after")
    def _refuse_unsupported(self):
        if self.n != 1:
            raise _Refused("n", "only n=1 is supported: send several requests for several answers")
        if self.stream_options is not None and not self.stream:
            raise _Refused("stream_options", "stream_options is only allowed with stream: true")
        if self.logprobs not in (None, False, 0):
            raise _Refused("logprobs", "logprobs are not supported by this server")
        if self.logit_bias:
            raise _Refused("logit_bias", "logit_bias is not supported by this server")
        if isinstance(self.stop, list) and any(not s for s in self.stop) or self.stop == "":
            raise _Refused("stop", "stop strings must not be empty")
        return self

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def sampling(
        self, max_new_tokens: int, json_schema: str | None = None, defaults: SamplingParams | None = None
    ) -> SamplingParams:
        """This request's sampling, with the budget the server granted; the fields it leaves out take
        `defaults` (the served model's recommendation)."""
        defaults = defaults or SamplingParams()

        def pick(name: str):
            value = getattr(self, name)
            return getattr(defaults, name) if value is None else value

        return SamplingParams(
            max_new_tokens=max_new_tokens,
            temperature=pick("temperature"),
            top_p=pick("top_p"),
            top_k=pick("top_k"),
            repetition_penalty=pick("repetition_penalty"),
            no_repeat_ngram_size=pick("no_repeat_ngram_size"),
            loop_guard=self.loop_guard,
            presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            # Unseeded sampling must differ between requests: GenAI's default seed is a constant.
            seed=secrets.randbits(63) if self.seed is None else self.seed % 2**63,
            stop=tuple(self.stops()),
            json_schema=json_schema,
        )


class ChatRequest(_Sampling):
    messages: Annotated[list[Message], Field(min_length=1)]
    max_completion_tokens: MaxTokens | None = None
    response_format: ResponseFormat | None = None
    tools: list | None = None
    tool_choice: Any = None
    functions: list | None = None
    function_call: Any = None
    top_logprobs: int | None = None

    @model_validator(mode="after")
    def _chat_checks(self):
        for name in ("tools", "functions", "function_call"):
            if getattr(self, name):
                raise _Refused(name, "tool calling is not supported by this server")
        if self.tool_choice not in (None, "none", "auto"):
            raise _Refused("tool_choice", "tool calling is not supported by this server")
        if self.top_logprobs:
            raise _Refused("top_logprobs", "logprobs are not supported by this server")
        if self.response_format and self.response_format.type == "json_schema" and not self.response_format.json_schema:
            raise _Refused("response_format.json_schema", "response_format json_schema needs a json_schema object")
        return self

    def budget(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def schema(self) -> str | None:
        """The JSON schema the answer must follow, if any (checked here: a bad one would break the engine)."""
        fmt = self.response_format
        if fmt is None or fmt.type == "text":
            return None
        if fmt.type == "json_object":
            return json.dumps({"type": "object"})
        schema = fmt.json_schema.schema_
        check_json_schema(schema, "response_format.json_schema.schema")
        return json.dumps(schema)


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    @model_validator(mode="after")
    def _completion_checks(self):
        if self.echo:
            raise _Refused("echo", "echo is not supported by this server")
        if self.suffix:
            raise _Refused("suffix", "suffix (fill-in-the-middle) is not supported by this server")
        if self.best_of not in (None, 1):
            raise _Refused("best_of", "only best_of=1 is supported")
        prompt = self.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
            if len(prompt) != 1:
                raise _Refused("prompt", "send one prompt per request (a list of several is not supported)")
            prompt = prompt[0]
        if len(prompt) == 0:
            raise _Refused("prompt", "prompt is empty")
        self.prompt = prompt
        return self

    def budget(self) -> int | None:
        return self.max_tokens


class _Refused(ValueError):
    """A validator's refusal that names its own parameter."""

    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param


# Fields that take several shapes: one rule for all of them beats pydantic's first-branch message.
_SHAPES = {
    "stop": "must be a string or a list of up to 4 non-empty strings",
    "prompt": "must be a string, a list of token ids, or a one-element list of either",
    "content": "must be a string or a list of text parts (only text is supported)",
}
_TYPE_TAGS = {"str", "int", "float", "bool", "dict", "list", "none", "is-instance"}


def _param(loc: tuple) -> tuple[str, bool]:
    """pydantic's error location as OpenAI's param (messages[0].content), and whether it came from
    inside one branch of a field that takes several shapes."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in _TYPE_TAGS or "[" in str(part):
            return out, True  # the rest names a branch of a union, not a field
        else:
            out += f".{part}" if out else str(part)
    return out, False


def parse(model: type[BaseModel], data: Any) -> BaseModel:
    """Validate a decoded JSON body; the first problem becomes a 400 naming the field."""
    if not isinstance(data, dict):
        raise ApiError(400, f"the request body must be a JSON object, not {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        cause = error.get("ctx", {}).get("error")
        if isinstance(cause, _Refused):
            raise ApiError(400, str(cause), cause.param) from None
        param, in_branch = _param(error["loc"])
        name = param.rsplit(".", 1)[-1]
        if error["type"] == "missing":
            message = "field required"
        elif in_branch and name in _SHAPES:
            message = _SHAPES[name]
        else:
            message = error["msg"].removeprefix("Value error, ")
        raise ApiError(400, f"{param}: {message}" if param else message, param or None) from None


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
