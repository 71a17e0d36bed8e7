"""`ovchat ovms`: the OVMS repository parses (protobuf text format and JSON) and points at real files."""

from __future__ import annotations

import json
import re

import pytest
from helpers import run_cli

from ovchat import OvchatError
from ovchat.ovms import REQUIRED_FILES, parsers, write_repository

# LLMCalculatorOptions as OVMS 2026.3 defines them (src/llm/llm_calculator.proto in
# openvinotoolkit/model_server): each field ovchat may write, with a check of its text-format value.
_UINT = str.isdigit
_BOOL = {"true", "false"}.__contains__
LLM_CALCULATOR_OPTIONS = {
    "models_path": bool, "max_num_batched_tokens": _UINT, "cache_size": _UINT, "max_num_seqs": _UINT,
    "dynamic_split_fuse": _BOOL, "device": bool, "plugin_config": lambda v: isinstance(json.loads(v), dict),
    "best_of_limit": _UINT, "max_tokens_limit": _UINT, "enable_prefix_caching": _BOOL,
    "pipeline_type": {"LM", "VLM", "LM_CB", "VLM_CB", "AUTO"}.__contains__,
    "tool_parser": lambda v: v in OVMS_TOOL_PARSERS, "reasoning_parser": lambda v: v in OVMS_REASONING_PARSERS,
    "enable_tool_guided_generation": _BOOL,
}
# The parser names OVMS 2026.3 accepts (src/llm/io_processing/parser_config_validation.cpp).
OVMS_TOOL_PARSERS = {"llama3", "hermes3", "phi4", "mistral", "gptoss", "qwen3coder", "devstral", "lfm2", "gemma4"}
OVMS_REASONING_PARSERS = {"qwen3", "gemma4", "gptoss", "lfm2"}

_TOKEN = re.compile(r"""\s*(?:(#[^\n]*)|("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')|(\[[^\]]*\])|([{}:,;])|([\w.+-]+))""")


def parse_pbtxt(text: str) -> dict:
    """A strict reader of protobuf text format: fields, nested messages, [extension] names, scalars.
    Returns {field: [values]}; raises ValueError on anything malformed."""
    tokens, pos = [], 0
    while pos < len(text.rstrip()):
        match = _TOKEN.match(text, pos)
        if not match or match.end() == pos:
            raise ValueError(f"unexpected text at {pos}: {text[pos:pos + 20]!r}")
        pos = match.end()
        if not match.group(1):  # comments are skipped
            tokens.append(next(g for g in match.groups()[1:] if g is not None))

    def message(i: int, closing: str | None) -> tuple[dict, int]:
        fields: dict = {}
        while i < len(tokens) and tokens[i] != closing:
            key = tokens[i]
            if not re.fullmatch(r"\[[^\]]+\]|[A-Za-z_]\w*", key):
                raise ValueError(f"bad field name {key!r}")
            i += 1
            if tokens[i] == ":":
                i += 1
            if tokens[i] == "{":
                value, i = message(i + 1, "}")
                i += 1
            elif tokens[i] in "{}:,;":
                raise ValueError(f"missing value for {key}")
            else:
                raw = tokens[i]
                value = raw[1:-1] if raw[0] in "\"'" else raw
                i += 1
            fields.setdefault(key, []).append(value)
            if i < len(tokens) and tokens[i] in (",", ";"):
                i += 1
        if closing and i >= len(tokens):
            raise ValueError("unclosed message")
        return fields, i

    parsed, end = message(0, None)
    if end != len(tokens):
        raise ValueError("trailing tokens")
    return parsed


def test_the_reader_is_strict():
    assert parse_pbtxt('a: "x" b { c: 1, d: true } [ext.y] { e: \'z\' }') == {
        "a": ["x"], "b": [{"c": ["1"], "d": ["true"]}], "[ext.y]": [{"e": ["z"]}]}
    for bad in ('a: "x', "a { b: 1", "a: }", "1a: 2"):
        with pytest.raises((ValueError, IndexError)):
            parse_pbtxt(bad)


def test_repository_for_the_tiny_phi3(tiny_phi3_ov, tmp_path):
    repo = tmp_path / "repo"
    config = write_repository(str(tiny_phi3_ov), repo, name="tiny", max_num_seqs=4, kv_cache_gb=3,
                              kv_cache_precision="u8", log=lambda _: None)
    data = json.loads(config.read_text())
    assert data == {"model_config_list": [{"config": {"name": "tiny", "base_path": "tiny"}}]}
    folder = repo / "tiny"
    text = (folder / "graph.pbtxt").read_text()
    assert text.startswith("# OVMS_GRAPH_QUEUE_MAX_SIZE: AUTO\n")
    graph = parse_pbtxt(text)
    assert graph["input_stream"] == ["HTTP_REQUEST_PAYLOAD:input"]
    assert graph["output_stream"] == ["HTTP_RESPONSE_PAYLOAD:output"]
    node = graph["node"][0]
    assert node["calculator"] == ["HttpLLMCalculator"]
    assert node["input_side_packet"] == ["LLM_NODE_RESOURCES:llm", "LLM_NODE_EXECUTION_CONTEXTS:llm_ctx"]
    assert node["input_stream"] == ["LOOPBACK:loopback", "HTTP_REQUEST_PAYLOAD:input"]
    assert node["output_stream"] == ["LOOPBACK:loopback", "HTTP_RESPONSE_PAYLOAD:output"]
    assert node["input_stream_info"] == [{"tag_index": ["LOOPBACK:0"], "back_edge": ["true"]}]
    assert node["input_stream_handler"][0]["input_stream_handler"] == ["SyncSetInputStreamHandler"]
    options = node["node_options"][0]["[type.googleapis.com / mediapipe.LLMCalculatorOptions]"][0]
    assert set(options) <= set(LLM_CALCULATOR_OPTIONS), set(options) - set(LLM_CALCULATOR_OPTIONS)
    for name, value in options.items():
        assert LLM_CALCULATOR_OPTIONS[name](value[0]), (name, value)
    assert "tool_parser" not in options  # Phi-3's template has no tool format: OVMS's own default
    assert options["pipeline_type"] == ["LM_CB"] and options["device"] == ["CPU"]
    assert options["max_num_seqs"] == ["4"] and options["cache_size"] == ["3"]
    assert options["enable_prefix_caching"] == ["true"]
    plugin = json.loads(options["plugin_config"][0])
    # Every precision stated (the u8 cache asked for above), so OVMS runs the same pair on whichever CPU.
    assert plugin == {"INFERENCE_PRECISION_HINT": "f32", "KV_CACHE_PRECISION": "u8",
                      "DYNAMIC_QUANTIZATION_GROUP_SIZE": "0", "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1"}
    models = (folder / options["models_path"][0]).resolve()
    assert models == folder.resolve()
    for name in REQUIRED_FILES:
        assert (models / name).stat().st_size > 0
    assert not (models / "ovchat_manifest.json").exists()

    # The folder is a model folder OpenVINO GenAI (OVMS's engine) loads and runs as exported.
    import openvino_genai as ov_genai

    pipe = ov_genai.LLMPipeline(str(models), "CPU")
    config_ = ov_genai.GenerationConfig(max_new_tokens=8)
    answer = pipe.generate(ov_genai.ChatHistory([{"role": "user", "content": "Hi"}]), config_)
    assert "Hello world!" in str(answer)


def test_repository_keeps_other_models_and_needs_force(tiny_phi3_ov, tmp_path):
    repo = tmp_path / "repo"
    write_repository(str(tiny_phi3_ov), repo, name="one", log=lambda _: None)
    write_repository(str(tiny_phi3_ov), repo, name="org/two", log=lambda _: None)
    names = [e["config"]["name"] for e in json.loads((repo / "config.json").read_text())["model_config_list"]]
    assert names == ["one", "org/two"] and (repo / "org" / "two" / "graph.pbtxt").is_file()
    with pytest.raises(OvchatError, match="--force"):
        write_repository(str(tiny_phi3_ov), repo, name="one", log=lambda _: None)
    write_repository(str(tiny_phi3_ov), repo, name="one", force=True, log=lambda _: None)
    for bad in ("../escape", "/abs", "a//b"):
        with pytest.raises(OvchatError, match="cannot name"):
            write_repository(str(tiny_phi3_ov), repo, name=bad, log=lambda _: None)
    assert not (tmp_path / "escape").exists()


def test_older_repositories_move_to_model_config_list(tiny_phi3_ov, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "config.json").write_text(json.dumps({
        "mediapipe_config_list": [{"name": "old", "base_path": "old"}, {"name": "tiny", "base_path": "x"}],
        "model_config_list": [{"config": {"name": "resnet", "base_path": "/models/resnet"}}]}))
    write_repository(str(tiny_phi3_ov), repo, name="tiny", log=lambda _: None)
    assert json.loads((repo / "config.json").read_text()) == {"model_config_list": [
        {"config": {"name": "resnet", "base_path": "/models/resnet"}},
        {"config": {"name": "old", "base_path": "old"}},
        {"config": {"name": "tiny", "base_path": "tiny"}}]}


# Chat-template fragments as the models ship them, and the parsers OVMS names for them.
TEMPLATES = [
    ("{% for message in messages %}<|im_start|>{{ message.role }}{% endfor %}", None, None),  # SmolLM2
    ("<tool_call>\n{{ tool_call | tojson }}\n</tool_call>", "hermes3", None),  # Qwen2.5
    ("<tool_call>{{ t }}</tool_call>{% if '</think>' in content %}", "hermes3", "qwen3"),  # Qwen3
    ("<|python_tag|>{{ tool_call.name }}", "llama3", None),  # Llama 3.1
    ("<|tool|>{{ tools | tojson }}<|/tool|>functools[{{ calls }}]", "phi4", None),  # Phi-4-mini
    ("[AVAILABLE_TOOLS]{{ tools }}[/AVAILABLE_TOOLS][TOOL_CALLS]", "mistral", None),
    ("[TOOL_CALLS]{{ name }}[ARGS]{{ args }}", "devstral", None),
    ("<|channel|>analysis<|message|>", "gptoss", "gptoss"),
]


@pytest.mark.parametrize(("template", "tool", "reasoning"), TEMPLATES)
def test_parsers_follow_the_chat_template(template, tool, reasoning):
    assert parsers(template) == (tool, reasoning)
    assert tool is None or tool in OVMS_TOOL_PARSERS
    assert reasoning is None or reasoning in OVMS_REASONING_PARSERS


def test_a_template_with_tools_names_its_parser_in_the_graph(tiny_phi3_ov, tmp_path):
    import shutil

    model = tmp_path / "qwen-like"
    shutil.copytree(tiny_phi3_ov, model)
    template = model / "chat_template.jinja"
    template.write_text(TEMPLATES[1][0] + template.read_text())
    (model / "ovchat_manifest.json").unlink()  # now a plain exported folder, not ovchat's own export
    write_repository(str(model), tmp_path / "repo", name="q", log=lambda _: None)
    graph = parse_pbtxt((tmp_path / "repo" / "q" / "graph.pbtxt").read_text())
    options = graph["node"][0]["node_options"][0]["[type.googleapis.com / mediapipe.LLMCalculatorOptions]"][0]
    assert options["tool_parser"] == ["hermes3"] and options["enable_tool_guided_generation"] == ["true"]


def test_cli(tiny_phi3_ov, tmp_path):
    done = run_cli("ovms", str(tmp_path / "r"), "--model", str(tiny_phi3_ov), "--name", "tiny")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("config.json") and "--config_path /models/config.json" in done.stderr
    again = run_cli("ovms", str(tmp_path / "r"), "--model", str(tiny_phi3_ov), "--name", "tiny")
    assert again.returncode == 1 and "--force" in again.stderr
