"""The OpenAI request shapes ovchat serves, validated strictly: a wrong type or range is a 400 naming the field.

Unknown fields are ignored (clients send many); known fields ovchat cannot honour are refused, never
silently dropped.
"""

from __future__ import annotations

import json
import secrets
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .. import tools as toolkit
from ..sampling import MAX_TOP_LOGPROBS, SamplingParams
from ..tool_formats import CallFormat
from .api_error import ApiError
from .schemas import check_json_schema

__all__ = ["ApiError", "ChatRequest", "CompletionRequest", "parse"]  # ApiError's home for the routes


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class FunctionCall(_Strict):
    name: str
    arguments: str


class ToolCall(_Strict):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    tool_calls: list[ToolCall] | None = None  # an assistant's earlier calls
    tool_call_id: str | None = None  # which call a tool message answers

    @model_validator(mode="after")
    def _content(self):
        if self.content is None and self.role != "assistant":
            raise ValueError(f"a {self.role} message needs content")
        if self.role == "tool" and not self.tool_call_id:
            raise _Refused("tool_call_id", "a tool message needs the tool_call_id of the call it answers")
        if self.tool_calls and self.role != "assistant":
            raise _Refused("tool_calls", "only assistant messages carry tool_calls")
        return self

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""

    def plain(self) -> dict:
        """As the chat template and ovchat.tools see it (developer is the system role)."""
        out = {"role": "system" if self.role == "developer" else self.role, "content": self.text()}
        if self.tool_calls:
            out["tool_calls"] = [call.model_dump() for call in self.tool_calls]
        if self.tool_call_id:
            out["tool_call_id"] = self.tool_call_id
        return out


class FunctionDef(_Strict):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
    description: str = ""
    parameters: dict | None = None
    strict: bool | None = None


class ToolDef(_Strict):
    type: Literal["function"]
    function: FunctionDef


class FunctionName(_Strict):
    name: str


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: FunctionName


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
TopLogprobs = Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)]


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
    logit_bias: dict | None = None
    user: str | None = None

    @model_validator(mode="after")
    def _refuse_unsupported(self):
        if self.n != 1:
            raise _Refused("n", "only n=1 is supported: send several requests for several answers")
        if self.stream_options is not None and not self.stream:
            raise _Refused("stream_options", "stream_options is only allowed with stream: true")
        if self.logit_bias:
            raise _Refused("logit_bias", "logit_bias is not supported by this server")
        if isinstance(self.stop, list) and any(not s for s in self.stop) or self.stop == "":
            raise _Refused("stop", "stop strings must not be empty")
        return self

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def sampling(
        self,
        max_new_tokens: int,
        json_schema: str | None = None,
        defaults: SamplingParams | None = None,
        grammar: str | None = None,
        tool_tags: str | None = None,
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
            grammar=grammar,
            tool_tags=tool_tags,
            logprobs=self.wants_logprobs(),
            top_logprobs=self.alternatives(),
        )

    def wants_logprobs(self) -> bool:
        return False

    def alternatives(self) -> int:
        """How many of the most likely tokens to show beside each generated one."""
        return 0


class ChatRequest(_Sampling):
    messages: Annotated[list[Message], Field(min_length=1)]
    max_completion_tokens: MaxTokens | None = None
    response_format: ResponseFormat | None = None
    tools: list[ToolDef] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True
    functions: list | None = None
    function_call: Any = None
    logprobs: bool | None = None
    top_logprobs: TopLogprobs | None = None

    @model_validator(mode="after")
    def _chat_checks(self):
        for name in ("functions", "function_call"):
            if getattr(self, name):
                raise _Refused(name, f"{name} is OpenAI's deprecated form: send tools and tool_choice")
        names = [tool.function.name for tool in self.tools or []]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise _Refused(f"tools[{i}].function.name", f"two tools are named {name!r}; names must be unique")
        choice = self.tool_choice
        if choice == "required" and not names:
            raise _Refused("tool_choice", "tool_choice 'required' needs tools")
        if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
            raise _Refused(
                "tool_choice",
                f"tool_choice names {choice.function.name!r}, which is not among the tools"
                + (f" ({', '.join(names)})" if names else " (none were given)"),
            )
        if self.top_logprobs is not None and not self.logprobs:
            raise _Refused("top_logprobs", "top_logprobs needs logprobs: true")
        if self.response_format and self.response_format.type == "json_schema" and not self.response_format.json_schema:
            raise _Refused("response_format.json_schema", "response_format json_schema needs a json_schema object")
        return self

    def budget(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def wants_logprobs(self) -> bool:
        return bool(self.logprobs)

    def alternatives(self) -> int:
        return self.top_logprobs or 0

    def messages_plain(self) -> list[dict]:
        """The messages as plain dicts, a tool result's call checked against the conversation."""
        messages = [m.plain() for m in self.messages]
        try:
            toolkit.check_history(messages)
        except toolkit.ToolError as exc:
            raise ApiError(400, str(exc), exc.param) from None
        return messages

    def tool_plan(self, format: CallFormat | None = None) -> toolkit.ToolPlan:
        """What the tools do to this request (checked here: a bad schema would break the engine), in the
        served template's own call `format` where it has one."""
        given = []
        for i, tool in enumerate(self.tools or []):
            where = f"tools[{i}].function.parameters"
            try:
                made = toolkit.make_tool(tool.function.name, tool.function.description, tool.function.parameters, where)
            except toolkit.ToolError as exc:
                raise ApiError(400, str(exc), exc.param) from None
            check_json_schema(tool.function.parameters or {}, where)
            given.append(made)
        choice = self.tool_choice
        named = choice.function.name if isinstance(choice, NamedToolChoice) else None
        reply = self._response_schema()
        return toolkit.ToolPlan(tuple(given), named or choice or "auto", self.parallel_tool_calls,
                                None if reply is None else reply, toolkit.format_for(format, given))

    def schema(self) -> str | None:
        """The JSON schema response_format asks for, if any (with tools, see ToolPlan.constraint)."""
        reply = self._response_schema()
        return None if reply is None else json.dumps(reply)

    def _response_schema(self) -> dict | bool | None:
        fmt = self.response_format
        if fmt is None or fmt.type == "text":
            return None
        if fmt.type == "json_object":
            return {"type": "object"}
        schema = fmt.json_schema.schema_
        check_json_schema(schema, "response_format.json_schema.schema")
        return schema


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None
    logprobs: TopLogprobs | None = None  # the legacy API's: how many alternatives (0: the chosen token's only)

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

    def wants_logprobs(self) -> bool:
        return self.logprobs is not None

    def alternatives(self) -> int:
        return self.logprobs or 0


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
        if isinstance(cause, _Refused):  # named from where its validator ran (a message: messages[2].x)
            where = _param(error["loc"])[0]
            raise ApiError(400, str(cause), f"{where}.{cause.param}" if where else cause.param) from None
        param, in_branch = _param(error["loc"])
        name = param.rsplit(".", 1)[-1]
        if error["type"] == "missing":
            message = "field required"
        elif in_branch and name in _SHAPES:
            message = _SHAPES[name]
        else:
            message = error["msg"].removeprefix("Value error, ")
        raise ApiError(400, f"{param}: {message}" if param else message, param or None) from None
