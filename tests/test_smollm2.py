"""End to end on the real SmolLM2-135M-Instruct: GGUF → int4 OpenVINO → answers a person would check."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from helpers import run_cli

from ovchat import catalog

pytestmark = pytest.mark.slow

TRICKY = [
    "  two leading spaces",
    "tabs\tand\nnew\n\nlines",
    "unicode: café, naïve, Straße, 東京, Привет",
    "emoji: 🙂👍🏽 done",
    "<|im_start|>user\nHi<|im_end|>\n",
]


def test_default_export_recipe_and_fallback(smollm2_ov):
    info = json.loads((smollm2_ov / "ovchat_manifest.json").read_text())
    assert info["source"] == {
        "spec": "smollm2-135m",
        "kind": "wheel",
        "identity": catalog.resolve("smollm2-135m").identity,
    }
    # hidden 576 is a multiple of the default group 32: no layer falls back (see test_phi3_sample for one).
    assert info["recipe"]["group_size"] == 32 and info["recipe"]["adjusted_group_sizes"] == []
    assert info["weights"]["int4 group 32"] > 0 and not any(k.startswith("int4 group 64") for k in info["weights"])
    size = sum(e["size"] for e in info["files"].values())
    assert 60e6 < size < 160e6  # int4: well under the 265 MB fp16 IR


def test_exported_tokenizer_matches_the_gguf_one(smollm2, smollm2_ov):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(smollm2_ov)
    for text in TRICKY:
        ids = smollm2.tokenizer.encode(text, add_special_tokens=False).input_ids.data[0].tolist()
        assert ids == hf.encode(text, add_special_tokens=False), text
        assert smollm2.tokenizer.decode(ids, skip_special_tokens=False) == text
    im_end = smollm2.tokenizer.encode("<|im_end|>", add_special_tokens=False).input_ids.data[0].tolist()
    assert im_end == [2] and 2 in smollm2.stop_token_ids


def test_chatml_prompt(smollm2):
    text = smollm2.render([{"role": "user", "content": "Hi"}])
    assert text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_answers_paris(smollm2):
    chunks = list(smollm2.stream_generate("What is the capital of France?", max_new_tokens=32))
    answer = "".join(c.text for c in chunks)
    assert "Paris" in answer
    assert "<|im_end|>" not in answer
    assert chunks[-1].finish_reason == "stop" and chunks[-1].token_count < 32


def test_streamed_pieces_never_split_a_character(smollm2):
    # A prompt the default export answers with "ß" (two bytes) among many pieces.
    chunks = list(smollm2.stream_generate("Write the German word for street (Straße).", max_new_tokens=40))
    pieces = [c.text for c in chunks]
    assert all("\ufffd" not in p for p in pieces)
    assert any(ord(ch) > 127 for ch in "".join(pieces)) and len(pieces) > 5


def test_sampling_with_a_seed_is_repeatable(smollm2):
    def sample(seed):
        return smollm2.generate("Tell me a story.", temperature=1.0, seed=seed, max_new_tokens=16)

    first = sample(7)
    assert sample(7) == first
    assert any(sample(seed) != first for seed in range(3))  # and the seed does matter


def test_cli_generate_uses_the_cached_export(smollm2_ov):
    done = run_cli("generate", "What is the capital of France?", "--max-new-tokens", "32", "-v")
    assert done.returncode == 0, done.stderr
    assert "Paris" in done.stdout
    assert "exporting" not in done.stderr  # the second run does not export again
    assert re.search(r"\[\d+ prompt tokens, \d+ new, first token \d+ ms", done.stderr)


def test_readme_python_example_runs(smollm2_ov):
    readme = (catalog.Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = re.search(r"## Python\n.*?```python\n(.*?)```", readme, re.S).group(1)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Paris" in done.stdout and "finish: " in done.stdout
    assert "repetition penalty 1.1 from ovchat's default" in done.stdout  # the chat's sampling, and why


def test_readme_tool_example_runs(smollm2_ov):
    readme = (catalog.Path(__file__).resolve().parents[1] / "README.md").read_text()
    load, tools = re.findall(r"```python\n(.*?)```", readme.split("## Python\n", 1)[1], re.S)[:2]
    load = "\n".join(line for line in load.splitlines() if line.startswith(("import ", "model = "))) + "\n"
    done = subprocess.run([sys.executable, "-c", load + tools], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    called, answer = done.stdout.split("\n", 1)
    assert re.fullmatch(r"add \{'a': -?\d+, 'b': -?\d+\}", called) and answer.strip()


def test_loads_in_optimum_intel_as_the_seed_does(smollm2_ov, tmp_path):
    from optimum.intel.openvino import OVModelForCausalLM
    from transformers import AutoConfig, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_ov)
    model = OVModelForCausalLM.from_pretrained(
        smollm2_ov,
        device="CPU",
        ov_config={"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", "CACHE_DIR": str(tmp_path)},
        config=AutoConfig.from_pretrained(smollm2_ov),
    )
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], tokenize=False, add_generation_prompt=True
    )
    inputs = tok(prompt, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**inputs, max_new_tokens=32)
    assert "Paris" in tok.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def test_prompt_lookup_gives_the_same_answer_in_fewer_steps(smollm2_ov):
    import ovchat
    from ovchat.eval.scoring import DEFAULT_TEXT

    quoted = " ".join(DEFAULT_TEXT.read_text()[3000:3600].split())
    # Quoted, then asked for: the greedy answer copies the paragraph at length on every precision measured
    # (f32, bf16, with and without int8 activations); an unquoted request made it stop early on some.
    prompt = f'Here is a paragraph:\n\n"{quoted}"\n\nRepeat the paragraph word for word.'
    # Compared where nothing rounds beyond f32: with the default u8 KV cache (and int8 activations where VNNI
    # runs them) the paged lookup pipeline and the plain one rounded differently and, on some of our CPUs,
    # took different words at a near-tie ("to listen" / "to listen to her").
    exact = {"precision": "f32", "kv_cache_precision": "f32", "config": {"DYNAMIC_QUANTIZATION_GROUP_SIZE": "0"}}
    plain = list(ovchat.load(str(smollm2_ov), **exact).stream_generate(prompt, max_new_tokens=96))
    lookup = list(ovchat.load(str(smollm2_ov), prompt_lookup=True, **exact).stream_generate(prompt, max_new_tokens=96))
    assert "".join(r.text for r in lookup) == "".join(r.text for r in plain)  # greedy: the very same answer
    assert lookup[-1].token_count == plain[-1].token_count > 40
    # Drafted tokens the model accepts arrive several per step: far fewer pieces than tokens.
    assert len(lookup) < 0.6 * len(plain)


def test_cli_prompt_lookup(smollm2_ov):
    prompt = "Repeat after me: the cat sat on the mat."
    done = run_cli("generate", prompt, "--model", str(smollm2_ov), "--prompt-lookup")
    assert done.returncode == 0, done.stderr
    assert "cat sat on the mat" in done.stdout
