"""Log-probabilities: the engine's two sources agree (GenAI's for the chosen token, the second pass's
for the alternatives), token bytes add up to the text, and the API's chat and completions shapes,
whole and streamed. Fast: the engine runs in-process on the tiny Phi-3; the API over a scripted engine."""

from __future__ import annotations

import math
import string
from pathlib import Path

import numpy as np
import pytest
from test_api import FakeBatch, anyio_backend, client, hello, scripted_logprob, served, sse_events  # noqa: F401

from ovchat import runtime
from ovchat.precision import choose
from ovchat.sampling import SamplingParams
from ovchat.server import engine_process
from ovchat.server.logprobs import TokenText
from ovchat.server.scorer import ScoreModel, top

HI = [{"role": "user", "content": "Hi"}]
TEXT = "Grüße, 世界! naïve café — ok 🙂\n\tdone"


def run_engine(folder, requests: dict[int, tuple[list[int], SamplingParams]]):
    """Every request through the real continuous-batching pipeline and the second pass, to the end."""
    chosen = choose("CPU", purpose="batch-invariant")  # f32 KV cache, no int8 activations: the two passes agree
    properties = runtime.runtime_properties(None, "", chosen)
    scheduler = {"cache_size": 1, "max_num_seqs": 4}
    pipe = engine_process._pipeline(str(folder), "CPU", properties, scheduler)
    engine = engine_process._Engine(pipe, None, [], ScoreModel(str(folder), "CPU", properties))
    for rid, (ids, sampling) in requests.items():
        assert engine.add(rid, ids, sampling) is None
    got = {rid: ([], []) for rid in requests}
    while engine.requests:
        for rid, new, finish, logprobs in engine.step():
            assert finish is None or not finish.startswith("error"), finish
            got[rid][0].extend(new)
            got[rid][1].extend(logprobs)
    return got, chosen


def test_the_chosen_tokens_log_prob_agrees_between_genai_and_the_second_pass(tiny_phi3_long_ov):
    ids = list(range(100, 140))
    plain = SamplingParams(max_new_tokens=16, logprobs=True)
    with_top = SamplingParams(max_new_tokens=16, logprobs=True, top_logprobs=5)
    got, chosen = run_engine(tiny_phi3_long_ov, {1: (ids, plain), 2: (ids, with_top)})
    (tokens, genai), (same_tokens, scored) = got[1], got[2]
    assert tokens == same_tokens and len(tokens) == len(genai) == len(scored) > 0
    tolerance = 2e-3 if chosen.inference == "f32" else 0.1  # bf16 rounds the two kernels differently
    for token, value, (logprob, alternatives) in zip(tokens, genai, scored, strict=True):
        assert isinstance(value, float) and value <= 0
        assert abs(value - logprob) < tolerance, (value, logprob)
        values = [lp for _, lp in alternatives]
        assert len(alternatives) == 5 and values == sorted(values, reverse=True)
        assert sum(math.exp(v) for v in values) <= 1 + 1e-4
        if chosen.inference == "f32":  # greedy: what the pipeline picked is the second pass's best
            assert alternatives[0] == (token, logprob)


def test_top_picks_the_best_in_order():
    row = np.log(np.array([0.1, 0.4, 0.05, 0.4, 0.05]))
    assert [i for i, _ in top(row, 3)] == [1, 3, 0]  # a tie goes to the lower id
    assert top(row, 0) == []


def _sentencepiece_folder(folder: Path) -> Path:
    """A Llama-style tokenizer.json: "▁" for spaces, "<0xNN>" byte fallback for what the vocabulary lacks."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{i:02X}>": 3 + i for i in range(256)}}
    for piece in ["\u2581", *string.ascii_letters, "ü", "ï", "é", ",", "\u2581d", "\u2581do"]:
        vocab[piece] = len(vocab)
    merges = [("\u2581", "d"), ("\u2581d", "o")]
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=True, unk_token="<unk>"))
    tokenizer.add_special_tokens([AddedToken("<s>", special=True), AddedToken("</s>", special=True)])
    tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    tokenizer.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                           decoders.Strip(" ", 1, 0)])
    tokenizer.save(str(folder / "tokenizer.json"))
    return tokenizer


def test_token_bytes_add_up_to_the_text_byte_level(tiny_phi3_ov):
    """GPT-2's printable stand-ins back to exact bytes, characters split across tokens included (their
    own text is "bytes:..." then); special tokens are their text."""
    import openvino_genai as ov_genai

    tokenizer = ov_genai.Tokenizer(str(tiny_phi3_ov))
    text_of = TokenText(tiny_phi3_ov, tokenizer)
    assert text_of.style == "byte-level"
    pieces = [text_of(i) for i in runtime.encode(tokenizer, TEXT, add_special_tokens=False)]
    assert b"".join(bytes(raw) for _, raw in pieces).decode("utf-8") == TEXT
    assert any(text.startswith("bytes:\\x") for text, _ in pieces)  # the emoji spans several tokens
    end = runtime.encode(tokenizer, "<|end|>", add_special_tokens=False)
    assert [text_of(i)[0] for i in end] == ["<|end|>"]


def test_token_bytes_add_up_to_the_text_sentencepiece(tmp_path):
    tokenizer = _sentencepiece_folder(tmp_path)
    text_of = TokenText(tmp_path, None)
    assert text_of.style == "sentencepiece"
    pieces = [text_of(i) for i in tokenizer.encode(TEXT).ids]
    assert b"".join(bytes(raw) for _, raw in pieces).decode("utf-8") == " " + TEXT  # SentencePiece's leading space
    assert text_of(tokenizer.token_to_id("<0xF0>")) == ("bytes:\\xf0", [0xF0])
    assert text_of(tokenizer.token_to_id("\u2581do")) == (" do", [32, 100, 111])
    assert text_of(1) == ("<s>", [60, 115, 62])


# -- the API's shapes, over the scripted engine -----------------------------------------------------


@pytest.fixture
def batch(hello) -> FakeBatch:  # noqa: F811
    return FakeBatch(hello)


@pytest.mark.anyio
async def test_chat_logprobs_whole_and_streamed(served, batch, hello):  # noqa: F811
    body = {"messages": HI, "logprobs": True, "top_logprobs": 2}
    async with client(served, batch) as http:
        whole = (await http.post("/v1/chat/completions", json=body)).json()
        streamed = await http.post("/v1/chat/completions", json={**body, "stream": True})
        plain = (await http.post("/v1/chat/completions", json={"messages": HI})).json()
    choice = whole["choices"][0]
    content = choice["logprobs"]["content"]
    text = choice["message"]["content"]
    assert len(content) == len(hello) - 1  # the end-of-turn token is not part of the answer
    assert "".join(e["token"] for e in content) == text == "Hello world!"
    assert b"".join(bytes(e["bytes"]) for e in content) == text.encode()
    for token, entry in zip(hello, content, strict=False):
        logprob, alternatives = scripted_logprob(token, 2)
        assert entry["logprob"] == logprob and len(entry["top_logprobs"]) == 2
        assert entry["top_logprobs"][0] == {k: entry[k] for k in ("token", "logprob", "bytes")}
        assert entry["top_logprobs"][1]["logprob"] == alternatives[1][1]
    chunks = sse_events(streamed.text)
    assert [e for c in chunks if c["choices"] and c["choices"][0]["logprobs"]
            for e in c["choices"][0]["logprobs"]["content"]] == content
    assert chunks[0]["choices"][0]["logprobs"] is None  # the role chunk
    assert plain["choices"][0]["logprobs"] is None
    assert [(s.logprobs, s.top_logprobs) for s in batch.sampling] == [(True, 2), (True, 2), (False, 0)]


@pytest.mark.anyio
async def test_completion_logprobs_legacy_shape(served, batch):  # noqa: F811
    async with client(served, batch) as http:
        one = (await http.post("/v1/completions", json={"prompt": "Hi", "logprobs": 1})).json()
        zero = (await http.post("/v1/completions", json={"prompt": "Hi", "logprobs": 0, "stream": True})).text
    choice = one["choices"][0]
    logprobs = choice["logprobs"]
    assert "".join(logprobs["tokens"]) == choice["text"]
    assert logprobs["text_offset"] == [sum(map(len, logprobs["tokens"][:i])) for i in range(len(logprobs["tokens"]))]
    assert all(len(alternatives) == 1 for alternatives in logprobs["top_logprobs"])
    streamed = [c["choices"][0]["logprobs"] for c in sse_events(zero) if c["choices"][0]["logprobs"]]
    assert [t for part in streamed for t in part["tokens"]] == logprobs["tokens"]
    assert all(alternatives == {} for part in streamed for alternatives in part["top_logprobs"])
