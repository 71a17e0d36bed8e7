"""`ovchat ovms`: the OVMS repository parses (protobuf text format and JSON) and points at real files."""

from __future__ import annotations

import json
import re

import pytest
from helpers import run_cli

from ovchat import OvchatError
from ovchat.ovms import REQUIRED_FILES, write_repository

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
    assert data["mediapipe_config_list"] == [{"name": "tiny", "base_path": "tiny"}]
    assert data["model_config_list"] == []
    folder = repo / "tiny"
    graph = parse_pbtxt((folder / "graph.pbtxt").read_text())
    assert graph["input_stream"] == ["HTTP_REQUEST_PAYLOAD:input"]
    node = graph["node"][0]
    assert node["calculator"] == ["HttpLLMCalculator"]
    assert node["input_side_packet"] == ["LLM_NODE_RESOURCES:llm"]
    options = node["node_options"][0]["[type.googleapis.com / mediapipe.LLMCalculatorOptions]"][0]
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
    names = [e["name"] for e in json.loads((repo / "config.json").read_text())["mediapipe_config_list"]]
    assert names == ["one", "org/two"] and (repo / "org" / "two" / "graph.pbtxt").is_file()
    with pytest.raises(OvchatError, match="--force"):
        write_repository(str(tiny_phi3_ov), repo, name="one", log=lambda _: None)
    write_repository(str(tiny_phi3_ov), repo, name="one", force=True, log=lambda _: None)
    for bad in ("../escape", "/abs", "a//b"):
        with pytest.raises(OvchatError, match="cannot name"):
            write_repository(str(tiny_phi3_ov), repo, name=bad, log=lambda _: None)
    assert not (tmp_path / "escape").exists()


def test_cli(tiny_phi3_ov, tmp_path):
    done = run_cli("ovms", str(tmp_path / "r"), "--model", str(tiny_phi3_ov), "--name", "tiny")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("config.json") and "--config_path /models/config.json" in done.stderr
    again = run_cli("ovms", str(tmp_path / "r"), "--model", str(tiny_phi3_ov), "--name", "tiny")
    assert again.returncode == 1 and "--force" in again.stderr
