"""Chat templates' own tool formats, detected from the template as OpenVINO Model Server does.

A model whose template has a tool format (Hermes-style `<tool_call>` blocks, Llama 3.x's bare JSON,
Phi-4-mini's `functools[...]`, Mistral's `[TOOL_CALLS] [...]`, Qwen3-Coder's XML) was trained on it: it
sees its tools the way the template writes them (the template's `tools`), the conversation's calls and
results keep OpenAI's fields for the template to render, and its calls are generated in its own form,
for example

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

under each tool's schema: with `required` or a named tool the whole answer is calls (a grammar of
them), with `auto` the text is free until the model opens a call, and from there the call is
constrained (OpenVINO GenAI's structural tags, triggered by the opening). Templates without a format
get ovchat's generic one (ovchat.tools).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from .call_format import CallFormat
from .tool_xml import QWEN3_CODER

# The template marks OVMS's chat-template analyzer looks for, in its order (first match wins):
# (all of these substrings, tool parser, reasoning parser).
PARSER_MARKS = (
    (("<|channel|>",), "gptoss", "gptoss"),
    (("<|tool_call>call:",), "gemma4", "gemma4"),
    (("<parameter=", "</parameter>", "<function="), "qwen3coder", None),
    (("functools",), "phi4", None),
    (("[TOOL_CALLS]", "[ARGS]"), "devstral", None),
    (("[TOOL_CALLS]",), "mistral", None),
    (("<|python_tag|>",), "llama3", None),
    (("<tool_call>", "</tool_call>"), "hermes3", None),
)
THINKING_MARKS = ("<think>", "</think>")


def template_parsers(template: str) -> tuple[str | None, str | None]:
    """OVMS's tool and reasoning parsers for a chat template (None: the template has no such format)."""
    thinks = "qwen3" if any(mark in template for mark in THINKING_MARKS) else None
    for marks, tool, reasoning in PARSER_MARKS:
        if all(mark in template for mark in marks):
            return tool, reasoning or (thinks if tool in ("qwen3coder", "hermes3") else None)
    return None, thinks


def chat_template(folder: Path, tokenizer=None) -> str:
    """The template a model folder is used with: a loaded tokenizer's (ovchat.runtime.use_folder_template
    gave it the chat_template.jinja beside the model, where GenAI can run that), else that file (as OVMS
    reads it), else the tokenizer's own."""
    jinja = Path(folder) / "chat_template.jinja"
    if tokenizer is None and jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    if tokenizer is None:
        import openvino_genai as ov_genai

        tokenizer = ov_genai.Tokenizer(str(folder))
    return tokenizer.chat_template or ""


HERMES = CallFormat("hermes", "hermes3", "<tool_call>\n", "\n</tool_call>")
# Llama 3.1-3.3: a bare {"name": ..., "parameters": ...}; the template writes back one call per turn.
LLAMA3 = CallFormat("llama3", "llama3", "", "", args_key="parameters", most=1)
# Phi-4-mini with the template OVMS and vLLM ship for its tools: functools[{"name": ..., "arguments": ...}, ...].
PHI4 = CallFormat("phi4", "phi4", "functools", "", separator=", ", listed=True, arguments_text=True,
                  list_trigger="functools[")
# Mistral 7B v0.3 and its peers: [TOOL_CALLS] [{"name": ..., "arguments": ...}, ...], call ids of 9 characters.
MISTRAL = CallFormat("mistral", "mistral", "[TOOL_CALLS] ", "", separator=", ", listed=True, hidden_begin=True,
                     id_length=9)
FORMATS = {"hermes3": HERMES, "llama3": LLAMA3, "phi4": PHI4, "mistral": MISTRAL, "qwen3coder": QWEN3_CODER}
# Llama 3.2's template lacks 3.1's <|python_tag|> (OVMS's mark); its instruction names the call's form.
LLAMA3_MARK = '"parameters": dictionary of argument name'


def detect(template: str) -> CallFormat | None:
    """The template's own call format, where ovchat writes it (else None: the generic format)."""
    parser = template_parsers(template)[0]
    if parser is None and LLAMA3_MARK in template:
        parser = "llama3"
    return FORMATS.get(parser or "")


def template_messages(messages: Iterable[dict], format: CallFormat | None = None) -> list[dict]:
    """OpenAI messages as chat templates take them: a call's arguments as an object (Hugging Face's
    convention; as text for a template that prints them), a tool result with the name of the call it
    answers, call ids in the form the template takes."""
    out, names = [], {}
    as_text, ids = format is not None and format.arguments_text, format.call_id if format else (lambda given: given)
    for message in messages:
        message = dict(message)
        if message.get("tool_calls"):
            calls = []
            for call in message["tool_calls"]:
                function = dict(call["function"])
                names[call.get("id")] = function["name"]
                try:
                    if not as_text:
                        function["arguments"] = json.loads(function.get("arguments") or "{}")
                except json.JSONDecodeError:
                    pass  # as the client sent it
                calls.append({**call, "id": ids(call.get("id")), "function": function})
            message["tool_calls"] = calls
            message["content"] = message.get("content") or ""
        elif "tool_calls" in message:
            del message["tool_calls"]  # empty or null: a template that checks "is defined" would open a call
        if message.get("role") == "tool":
            message.setdefault("name", names.get(message.get("tool_call_id"), ""))
            message["tool_call_id"] = ids(message.get("tool_call_id"))
        out.append(message)
    return out


def openai_tools(tools: Iterable) -> list[dict]:
    return [{"type": "function", "function": {"name": t.name, "description": t.description,
                                              "parameters": t.parameters}} for t in tools]
