"""The sample's flow on a tiny random Phi-3: export with its recipe, load with ovchat and as the sample does."""

from __future__ import annotations

import json
import sys

import pytest

from ovchat import OvchatError, SamplingParams, manifest
from ovchat.synthetic import TINY_ANSWER

PHI3_PROMPT = (
    "<|system|>\nYou are a helpful assistant.<|end|>\n<|user|>\nCan you introduce yourself?<|end|>\n<|assistant|>\n"
)
ANSWER = "".join(TINY_ANSWER)


def test_manifest_records_recipe_fallback_and_files(tiny_phi3_ov):
    info = json.loads((tiny_phi3_ov / "ovchat_manifest.json").read_text())
    assert info["recipe"] == {
        "weight_format": "int4",
        "group_size": 128,
        "ratio": 0.6,
        "sym": True,
        "awq": False,
        "scale_estimation": False,
        "task": "text-generation-with-past",
        "adjusted_group_sizes": [64],  # hidden 64: 128 does not divide
    }
    assert info["weights"]["int4 group 64"] >= 1 and info["weights"]["int8 per-channel"] >= 1
    for name in ("openvino_model.xml", "openvino_model.bin", "openvino_tokenizer.xml", "openvino_detokenizer.xml"):
        entry = info["files"][name]
        assert entry["size"] == (tiny_phi3_ov / name).stat().st_size > 0
        assert entry["sha256"] == manifest.sha256(tiny_phi3_ov / name)
    assert {"openvino", "openvino-genai", "optimum-intel", "nncf"} <= set(info["tools"])
    assert manifest.verify(tiny_phi3_ov, hashes=True) == info


def test_prompt_is_byte_exact_phi3_format(tiny_model):
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Can you introduce yourself?"},
    ]
    assert tiny_model.render(messages) == PHI3_PROMPT


def test_generation_stops_at_end_token(tiny_model):
    chunks = list(tiny_model.stream_generate("Can you introduce yourself?", system="You are a helpful assistant."))
    final = chunks[-1]
    assert "".join(c.text for c in chunks) == ANSWER  # decoded without special tokens: no "<|end|>"
    assert final.finish_reason == "stop"
    assert final.token_count == len(TINY_ANSWER) + 1  # the three words, then <|end|>
    assert final.prompt_tokens == tiny_model.count_tokens(PHI3_PROMPT)
    assert final.time_to_first_token > 0
    assert all(c.finish_reason is None for c in chunks[:-1])


def test_end_tokens_are_phi3s(tiny_model):
    end_ids = {
        tiny_model.tokenizer.encode(t, add_special_tokens=False).input_ids.data[0][0]
        for t in ("<|end|>", "<|endoftext|>")
    }
    assert end_ids <= tiny_model.stop_token_ids


def test_token_budget_gives_length(tiny_model):
    final = list(tiny_model.stream_generate("Hi", max_new_tokens=2))[-1]
    assert final.finish_reason == "length" and final.token_count == 2


def test_closing_the_stream_stops_generation(tiny_model):
    stream = tiny_model.stream_generate("hello hello hello", raw=True, max_new_tokens=200)
    next(stream, None)
    stream.close()
    # The model is free again at once and answers normally.
    assert tiny_model.generate("Hi") == ANSWER


def test_context_overflow_is_a_clear_error(tiny_model):
    with pytest.raises(OvchatError, match=r"prompt has \d+ tokens but the model's context is 256"):
        tiny_model.generate("word " * 400)


def test_answer_is_clamped_to_the_context(tiny_model):
    # Two tokens of room after a prompt ending in "\n": the model would say "Hello world!" but only fits two.
    prompt = "hello " * 50
    prompt += "hello " * ((tiny_model.context_length - 2 - tiny_model.count_tokens(prompt + "\n")) // 4) + "\n"
    while tiny_model.count_tokens(prompt) < tiny_model.context_length - 2:
        prompt = "a" + prompt
    assert tiny_model.count_tokens(prompt) == tiny_model.context_length - 2
    chunks = list(tiny_model.stream_generate(prompt, raw=True, max_new_tokens=1024))
    assert "".join(c.text for c in chunks) == "Hello world"
    assert (chunks[-1].token_count, chunks[-1].finish_reason) == (2, "length")


def test_one_generation_at_a_time_per_model(tiny_model):
    stream = tiny_model.stream_generate("Hi")
    next(stream)
    with pytest.raises(OvchatError, match="already generating"):
        tiny_model.generate("Hi")
    stream.close()
    assert tiny_model.generate("Hi") == ANSWER


def test_streamers_are_freed(tiny_model):
    import gc

    for _ in range(3):
        tiny_model.generate("Hi")
    gc.collect()
    assert not [o for o in gc.get_objects() if type(o).__name__ == "QueueStreamer"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_new_tokens": 0}, "max_new_tokens must be a positive integer"),
        ({"temperature": -1}, "temperature must be between 0 and 2"),
        ({"top_p": 0}, "top_p must be in"),
        ({"presence_penalty": 3}, "presence_penalty must be between -2 and 2"),
        ({"stop": ["a", ""]}, "stop must be up to 4 non-empty strings"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop must be up to 4 non-empty strings"),
    ],
)
def test_bad_sampling_parameters(tiny_model, kwargs, message):
    with pytest.raises(OvchatError, match=message):
        tiny_model.generate("Hi", **kwargs)


def test_sampling_comes_as_params_or_keywords_not_both(tiny_model):
    params = SamplingParams(max_new_tokens=2)
    assert tiny_model.generate("Hi", sampling=params) == tiny_model.generate("Hi", max_new_tokens=2)
    with pytest.raises(TypeError, match="not both"):
        tiny_model.generate("Hi", sampling=params, max_new_tokens=2)
    with pytest.raises(TypeError, match="unknown sampling parameters: temprature"):
        tiny_model.generate("Hi", temprature=0.5)


def test_a_json_schema_constrains_the_answer(tiny_model):
    schema = json.dumps({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]})
    constrained = tiny_model.generate("Hi", json_schema=schema, max_new_tokens=8)
    assert constrained.startswith("{") and "Hello" not in constrained  # the grammar overrides the weights


def test_the_loop_guard_ends_a_looping_answer(noisy_ov):
    # The damaged tiny Phi-3 says " world" forever.
    import ovchat

    noisy = ovchat.load(str(noisy_ov))
    *_, guarded = noisy.stream_generate("Hi", max_new_tokens=200)
    assert guarded.stopped_loop and guarded.finish_reason == "stop" and guarded.token_count < 120
    *_, unguarded = noisy.stream_generate("Hi", max_new_tokens=200, loop_guard=False)
    assert not unguarded.stopped_loop and unguarded.finish_reason == "length" and unguarded.token_count == 200


def test_a_json_schema_answer_is_not_cut_by_the_loop_guard(tiny_model):
    # Held to a grammar it cannot fill, the tiny model writes "{" and newlines: the grammar, not the
    # guard, decides; a cut answer would not parse.
    schema = json.dumps({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]})
    *_, last = tiny_model.stream_generate("Hi", json_schema=schema, max_new_tokens=200)
    assert not last.stopped_loop and last.finish_reason == "length" and last.token_count == 200


def test_a_stop_string_ends_the_answer_before_it(tiny_model):
    *pieces, last = tiny_model.stream_generate("Hi", stop=("o w", "zzz"))
    assert "".join(p.text for p in pieces) == "Hell"
    assert last.finish_reason == "stop" and last.token_count < 5  # generation stopped, not just the text
    # A stop string that never appears changes nothing; one the answer ends on is cut off.
    assert tiny_model.generate("Hi", stop="zzz") == "Hello world!"
    assert tiny_model.generate("Hi", stop="!") == "Hello world"



def test_runtime_path_imports_no_torch(tiny_phi3_ov):
    code = (
        "import sys, ovchat, ovchat.server, ovchat.cli; m = ovchat.load(sys.argv[1]); m.generate('Hi');"
        "bad = [x for x in ('torch', 'optimum', 'nncf', 'transformers') if x in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    import subprocess

    done = subprocess.run([sys.executable, "-c", code, str(tiny_phi3_ov)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_loads_in_optimum_intel_exactly_as_the_sample_does(tiny_phi3_ov, tmp_path):
    """The sample's own contract: OVModelForCausalLM + AutoTokenizer + generate on the same folder."""
    from optimum.intel.openvino import OVModelForCausalLM
    from transformers import AutoConfig, AutoTokenizer

    ov_config = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", "CACHE_DIR": str(tmp_path)}
    tok = AutoTokenizer.from_pretrained(tiny_phi3_ov, trust_remote_code=True)
    model = OVModelForCausalLM.from_pretrained(
        tiny_phi3_ov,
        device="CPU",
        ov_config=ov_config,
        config=AutoConfig.from_pretrained(tiny_phi3_ov, trust_remote_code=True),
        trust_remote_code=True,
    )
    inputs = tok(PHI3_PROMPT, return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=1024)
    answer = tok.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)[0]
    assert answer == ANSWER
