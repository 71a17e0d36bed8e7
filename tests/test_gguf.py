"""GGUF → Hugging Face conversion: metadata reading, checks, the rebuilt tokenizer, and a full conversion."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest

from ovchat.build.gguf import SUPPORTED_ARCHITECTURES, build_tokenizer, check_gguf, gguf_to_hf, read_gguf_metadata
from ovchat.errors import OvchatError

# Text that trips tokenizers up: leading, repeated and trailing whitespace, tabs, accents, CJK, emoji, digits.
TRICKY = [
    "Hello world",
    "  two leading spaces",
    "many     spaces   here",
    "line one\nline two\n\n\tindented\ttab\n",
    "naïve café, déjà vu — Ærøskøbing",
    "東京は日本の首都です。中文测试",
    "emoji 😀🎉 and a flag 🇫🇷",
    "numbers 1234567 and 3.14",
    "trailing space ",
]
CHAT = "<|im_start|>user\nHi<|im_end|>\n"


@pytest.fixture(scope="session")
def smollm_gguf(smollm2_gguf: Path) -> Path:
    return smollm2_gguf


@pytest.fixture(scope="session")
def smollm_metadata(smollm_gguf: Path) -> dict:
    return read_gguf_metadata(smollm_gguf)


@pytest.fixture(scope="session")
def smollm_tokenizer(smollm_metadata: dict):
    return build_tokenizer(smollm_metadata)


def write_gguf(
    path: Path,
    arch: str,
    endian: gguf.GGUFEndian = gguf.GGUFEndian.LITTLE,
    tensors: dict[str, np.ndarray] | None = None,
    **fields: object,
) -> None:
    """Write a GGUF file with the SentencePiece vocabulary below, `fields` (GGUFWriter.add_<field>) and
    `tensors` (one tiny tensor when none are given)."""
    writer = gguf.GGUFWriter(path, arch, endianess=endian)
    writer.add_context_length(64)
    add_sentencepiece_vocab(writer)
    for field, value in fields.items():
        getattr(writer, f"add_{field}")(value)
    for name, tensor in (tensors or {"token_embd.weight": np.zeros((4, 2), np.float32)}).items():
        writer.add_tensor(name, tensor)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


# A small SentencePiece vocabulary: specials, the 256 byte-fallback tokens, letters and a few merged pieces.
SPM_PIECES = ["▁", *"abcdefghijklmnopqrstuvwxyzHTW,.!?'", "ll", "llo", "▁H", "▁He", "▁Hello", "▁w"]
SPM_PIECES += ["or", "orl", "orld", "▁world", "▁t", "▁th", "▁this", "is", "▁is", "▁a", "es", "▁te", "▁test"]


def add_sentencepiece_vocab(writer: gguf.GGUFWriter) -> None:
    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256)), *SPM_PIECES]
    types = [2, 3, 3] + [6] * 256 + [1] * len(SPM_PIECES)
    # Longer pieces score higher, so they win merges the way SentencePiece's BPE scores do.
    scores = [0.0] * 259 + [len(p) - i / 1000 for i, p in enumerate(SPM_PIECES)]
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_scores(scores)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)


def byte_level_metadata(pre: str) -> dict:
    """Metadata for a byte-level BPE vocabulary of the 256 byte symbols plus one merge."""
    from tokenizers.pre_tokenizers import ByteLevel

    tokens = ["<|endoftext|>", *sorted(ByteLevel.alphabet()), "Ġt"]
    return {
        "general.architecture": "qwen2",
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": pre,
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": [3] + [1] * (len(tokens) - 1),
        "tokenizer.ggml.merges": ["Ġ t"],
        "tokenizer.ggml.eos_token_id": 0,
    }


# --- metadata and checks ---


def test_not_gguf_is_a_clear_error(tmp_path: Path) -> None:
    text = tmp_path / "notes.gguf"
    text.write_text("this is not a model\n")
    with pytest.raises(OvchatError, match="is not a GGUF file") as err:
        check_gguf(text)
    assert str(text) in str(err.value)
    assert "pass a .gguf model file" in str(err.value)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(OvchatError, match="does not exist"):
        read_gguf_metadata(tmp_path / "absent.gguf")


def test_truncated_gguf_is_a_clear_error(tmp_path: Path, smollm_gguf: Path) -> None:
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(smollm_gguf.read_bytes()[:100_000])  # ends inside the token list
    with pytest.raises(OvchatError, match="damaged or truncated"):
        read_gguf_metadata(cut)


def test_unsupported_architecture_lists_the_supported_ones(tmp_path: Path) -> None:
    path = tmp_path / "mamba.gguf"
    write_gguf(path, "mamba")
    with pytest.raises(OvchatError, match="'mamba'") as err:
        check_gguf(path)
    for arch in ("llama", "phi3", "qwen2"):
        assert arch in SUPPORTED_ARCHITECTURES
        assert arch in str(err.value)


def test_metadata_matches_gguf_reader(smollm_gguf: Path, smollm_metadata: dict) -> None:
    reader = gguf.GGUFReader(smollm_gguf)
    expected = {key: field.contents() for key, field in reader.fields.items() if not key.startswith("GGUF.")}
    assert smollm_metadata == expected
    assert smollm_metadata["general.architecture"] == "llama"
    assert smollm_metadata["llama.context_length"] == 8192
    assert len(smollm_metadata["tokenizer.ggml.tokens"]) == 49152


def test_big_endian_metadata_reads_like_little_endian(tmp_path: Path) -> None:
    little, big = tmp_path / "little.gguf", tmp_path / "big.gguf"
    write_gguf(little, "llama")
    write_gguf(big, "llama", endian=gguf.GGUFEndian.BIG)
    assert read_gguf_metadata(big) == read_gguf_metadata(little)
    last_score = len(SPM_PIECES[-1]) - (len(SPM_PIECES) - 1) / 1000
    assert read_gguf_metadata(big)["tokenizer.ggml.scores"][-1] == pytest.approx(last_score)


def test_check_gguf_on_the_real_file(smollm_gguf: Path) -> None:
    assert check_gguf(smollm_gguf) == "llama"


# --- the tokenizer rebuilt from the real SmolLM2 GGUF ---


@pytest.mark.parametrize("text", TRICKY + [CHAT])
def test_smollm_round_trip(smollm_tokenizer, text: str) -> None:
    ids = smollm_tokenizer.encode(text)
    assert smollm_tokenizer.decode(ids) == text


def test_smollm_matches_the_original_tokenizer(smollm_tokenizer) -> None:
    # Ids the original Hugging Face SmolLM2 tokenizer gives (digits split one by one, GPT-2 regex).
    assert smollm_tokenizer.encode("Hello, we can use") == [19556, 28, 392, 416, 722]
    assert smollm_tokenizer.encode("Hello world! 123") == [19556, 905, 17, 216, 33, 34, 35]
    assert smollm_tokenizer.encode("Café déjà vu.") == [51, 1939, 2756, 32564, 90, 16739, 386, 101, 30]
    assert smollm_tokenizer.encode("  multiple   spaces") == [216, 2701, 256, 5600]


def test_smollm_special_tokens(smollm_tokenizer) -> None:
    tok = smollm_tokenizer
    assert (tok.eos_token, tok.eos_token_id) == ("<|im_end|>", 2)
    assert (tok.bos_token, tok.bos_token_id) == ("<|im_start|>", 1)
    assert tok.pad_token_id == 2
    for marker in ("<|im_start|>", "<|im_end|>", "<|endoftext|>"):
        assert len(tok.encode(marker)) == 1
    ids = tok.encode(CHAT)
    assert ids[0] == 1 and ids.count(1) == 1 and ids.count(2) == 1
    assert tok.decode(ids, skip_special_tokens=True) == "user\nHi\n"
    # The transformers GGUF conversion encodes spaces as id 0 (<|endoftext|>) and adds no bos here.
    spaced = tok.encode("a sentence with   several spaces in it")
    assert 0 not in spaced
    assert spaced[0] != 1


def test_smollm_chat_template(smollm_tokenizer) -> None:
    prompt = smollm_tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False
    )
    assert "<|im_start|>user\nHi<|im_end|>\n" in prompt
    assert prompt.startswith("<|im_start|>system\n")
    assert prompt.endswith("<|im_start|>assistant\n")


# --- other tokenizer kinds, on vocabularies written here ---


def test_sentencepiece_tokenizer(tmp_path: Path) -> None:
    path = tmp_path / "spm.gguf"
    write_gguf(path, "llama")
    tok = build_tokenizer(read_gguf_metadata(path))
    assert tok.convert_ids_to_tokens(tok.encode("Hello world")) == ["<s>", "▁Hello", "▁world"]
    for text in ["Hello, world! This is a test.", "What's 42?", *TRICKY]:
        ids = tok.encode(text)
        assert ids[0] == tok.bos_token_id == 1
        assert tok.decode(ids, skip_special_tokens=True) == text
    # Characters outside the vocabulary fall back to their UTF-8 bytes instead of <unk>.
    assert tok.convert_ids_to_tokens(tok.encode("é", add_special_tokens=False)) == ["▁", "<0xC3>", "<0xA9>"]
    # Like llama.cpp, a text run after a special token gets its own leading "▁".
    assert tok.convert_ids_to_tokens(tok.encode("</s>Hello", add_special_tokens=False)) == ["</s>", "▁Hello"]
    assert (tok.eos_token, tok.unk_token) == ("</s>", "<unk>")


def test_sentencepiece_matches_transformers(tmp_path: Path) -> None:
    """transformers' own GGUF conversion is right for SentencePiece text ids (not for bos/eos): compare."""
    from transformers import AutoTokenizer

    write_gguf(tmp_path / "spm.gguf", "llama")
    ours = build_tokenizer(read_gguf_metadata(tmp_path / "spm.gguf"))
    theirs = AutoTokenizer.from_pretrained(tmp_path, gguf_file="spm.gguf")
    for text in ["Hello, world! This is a test.", "</s>Hello", *TRICKY]:
        assert ours.encode(text, add_special_tokens=False) == theirs.encode(text, add_special_tokens=False)


def test_phi3_chat_markers_swallow_the_following_whitespace(tmp_path: Path) -> None:
    path = tmp_path / "spm.gguf"
    write_gguf(path, "llama")
    metadata = read_gguf_metadata(path)
    metadata["general.architecture"] = "phi3"
    for key, value in (("tokens", "<|end|>"), ("token_type", 3), ("scores", 0.0)):
        metadata[f"tokenizer.ggml.{key}"] = [*metadata[f"tokenizer.ggml.{key}"], value]
    tok = build_tokenizer(metadata)
    tokens = tok.convert_ids_to_tokens(tok.encode("Hi<|end|>\nHello", add_special_tokens=False))
    assert tokens == ["▁H", "i", "<|end|>", "▁Hello"]


@pytest.mark.parametrize(
    ("pre", "pieces"),
    [
        ("gpt-2", ["Hi", "Ġ12345", "Ġworld"]),
        ("smollm", ["Hi", "Ġ", "1", "2", "3", "4", "5", "Ġworld"]),
        ("llama-bpe", ["Hi", "Ġ", "123", "45", "Ġworld"]),
        ("qwen2", ["Hi", "Ġ", "1", "2", "3", "4", "5", "Ġworld"]),
    ],
)
def test_byte_level_pre_tokenizers(pre: str, pieces: list[str]) -> None:
    tok = build_tokenizer(byte_level_metadata(pre))
    split = tok.backend_tokenizer.pre_tokenizer.pre_tokenize_str("Hi 12345 world")
    assert [piece for piece, _ in split] == pieces
    for text in TRICKY:
        assert tok.decode(tok.encode(text)) == text
    assert tok.convert_ids_to_tokens(tok.encode(" t")) == ["Ġt"]


def test_unsupported_pre_tokenizer_is_a_clear_error() -> None:
    with pytest.raises(OvchatError, match="pre-tokenizer 'tekken' is not supported.*llama-bpe"):
        build_tokenizer(byte_level_metadata("tekken"))


# --- full conversions ---


def test_tiny_llama_conversion(tmp_path: Path) -> None:
    """A 1-layer llama GGUF written here: weights load, ids and stop tokens reach the configs."""
    rng = np.random.default_rng(0)
    vocab, hidden, ffn = 259 + len(SPM_PIECES), 8, 16

    def weight(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(np.float32)

    tensors = {
        "token_embd.weight": weight(vocab, hidden),
        "output_norm.weight": np.ones(hidden, np.float32),
        "output.weight": weight(vocab, hidden),
        "blk.0.attn_norm.weight": np.ones(hidden, np.float32),
        "blk.0.ffn_norm.weight": np.ones(hidden, np.float32),
        **{f"blk.0.attn_{n}.weight": weight(hidden, hidden) for n in ("q", "k", "v", "output")},
        "blk.0.ffn_gate.weight": weight(ffn, hidden),
        "blk.0.ffn_up.weight": weight(ffn, hidden),
        "blk.0.ffn_down.weight": weight(hidden, ffn),
    }
    path = tmp_path / "tiny.gguf"
    write_gguf(
        path,
        "llama",
        tensors=tensors,
        embedding_length=hidden,
        feed_forward_length=ffn,
        block_count=1,
        head_count=2,
        head_count_kv=2,
        rope_dimension_count=hidden // 2,
        layer_norm_rms_eps=1e-5,
        eot_token_id=3,
    )

    out = gguf_to_hf(path, tmp_path / "hf")
    assert not list(out.glob("*.gguf"))
    config = json.loads((out / "config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"], config["max_position_embeddings"]) == (1, 2, 64)
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [2, 3]

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out)
    embed = model.get_input_embeddings().weight.detach().numpy()
    np.testing.assert_allclose(embed, tensors["token_embd.weight"])
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.decode(tok.encode("Hello, world!"), skip_special_tokens=True) == "Hello, world!"
    with torch.no_grad():
        assert model(torch.tensor([tok.encode("Hello")])).logits.shape == (1, 2, vocab)


@pytest.fixture(scope="module")
def smollm_hf(smollm_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return gguf_to_hf(smollm_gguf, tmp_path_factory.mktemp("smollm") / "hf")  # ~40 s: dequantise and save


@pytest.mark.slow
def test_smollm_folder(smollm_hf: Path) -> None:
    assert (smollm_hf / "model.safetensors").is_file()
    assert not list(smollm_hf.glob("*.gguf"))
    config = json.loads((smollm_hf / "config.json").read_text())
    assert (config["eos_token_id"], config["bos_token_id"], config["pad_token_id"]) == (2, 1, 2)
    assert config["max_position_embeddings"] == 8192
    assert json.loads((smollm_hf / "generation_config.json").read_text())["eos_token_id"] == 2


@pytest.mark.slow
def test_smollm_folder_tokenizer(smollm_hf: Path, smollm_tokenizer) -> None:
    from transformers import AutoTokenizer

    saved = AutoTokenizer.from_pretrained(smollm_hf)
    for text in TRICKY + [CHAT]:
        assert saved.encode(text) == smollm_tokenizer.encode(text)
    assert (saved.eos_token, saved.eos_token_id) == ("<|im_end|>", 2)
    messages = [{"role": "user", "content": "Hi"}]
    assert saved.apply_chat_template(messages, add_generation_prompt=True, tokenize=False).endswith(
        "<|im_start|>assistant\n"
    )


@pytest.mark.slow
def test_smollm_folder_answers(smollm_hf: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm_hf)
    model = AutoModelForCausalLM.from_pretrained(smollm_hf)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        output = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    answer = tok.decode(output[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer, answer
