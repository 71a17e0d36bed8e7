"""Convert a local .gguf file into a Hugging Face folder that optimum-intel can export.

transformers dequantises GGUF weights well, but its tokenizer conversion is wrong for byte-level BPE
vocabularies in llama-architecture files (eos becomes bos, and the saved CodeLlamaTokenizer encodes spaces
as `<|endoftext|>`), so the tokenizer is rebuilt here from the GGUF metadata the way llama.cpp reads it.
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import OvchatError

if TYPE_CHECKING:
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

# Architectures whose GGUF weights transformers can load and optimum-intel can export.
SUPPORTED_ARCHITECTURES = ("llama", "mistral", "phi3", "qwen2", "qwen3")

# GGUF value types (gguf spec): struct codes of the scalars, then the two composite types.
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9

# llama.cpp token types (tokenizer.ggml.token_type).
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED = 1, 2, 3, 4
# Phi-3's chat markers swallow the whitespace after them (its tokenizer.json, and llama.cpp), except these.
_PHI3_NO_RSTRIP = ("<unk>", "<s>", "<|endoftext|>")

# tokenizer.ggml.* keys of the special token ids, by their transformers tokenizer and config names.
_SPECIAL_IDS = (
    ("bos_token", "bos_token_id"),
    ("eos_token", "eos_token_id"),
    ("unk_token", "unknown_token_id"),
    ("pad_token", "padding_token_id"),
)
# llama.cpp ends generation at any of these (end of sequence, of turn, of message).
_STOP_IDS = ("eos_token_id", "eot_token_id", "eom_token_id")

# Split regexes of llama.cpp's pre-tokenizers (llama-vocab.cpp), as the models' own tokenizer.json write them.
_LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# tokenizer.ggml.pre -> pre-tokenizer family: "gpt2" is GPT-2's regex, "digits" is that regex after
# splitting every digit apart (StarCoder, SmolLM), "llama3"/"qwen2" are the regexes above.
_PRE_TOKENIZERS = {
    **dict.fromkeys(("gpt-2", "phi-2", "mpt", "olmo", "jais"), "gpt2"),
    **dict.fromkeys(("starcoder", "refact", "smollm", "codeshell", "command-r", "exaone"), "digits"),
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "falcon3"), "llama3"),
    **dict.fromkeys(("qwen2", "qwen2.5", "deepseek-r1-qwen", "stablelm2", "megrez"), "qwen2"),
}


def read_gguf_metadata(path: Path) -> dict[str, Any]:
    """Read the key/value metadata of a GGUF file: no tensor is read or dequantised."""
    path = Path(path)
    if not path.is_file():
        raise OvchatError(f"{path} does not exist or is not a file; pass a .gguf model file")
    with path.open("rb") as file:
        if file.read(4) != b"GGUF":
            raise OvchatError(
                f"{path} is not a GGUF file (its first bytes are not 'GGUF'); pass a .gguf model file, "
                "a Hugging Face folder or an exported folder"
            )
        # gguf.GGUFReader takes ~5 s on a 49k-token vocabulary (one numpy view per string); this takes ~0.1 s.
        with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            try:
                return _MetadataReader(buf).read()
            except (struct.error, UnicodeDecodeError, ValueError) as err:
                raise OvchatError(f"{path} is a damaged or truncated GGUF file ({err})") from err


class _MetadataReader:
    """Parses the GGUF header and key/value section, which come before the tensor infos and data."""

    def __init__(self, buf: mmap.mmap) -> None:
        self.buf = buf
        # The version is a small number: stored big-endian, its low two bytes read little-endian are zero.
        (version,) = struct.unpack_from("<I", buf, 4)
        self.order = ">" if version & 0xFFFF == 0 else "<"
        self.pos = 4

    def read(self) -> dict[str, Any]:
        version, _tensor_count, kv_count = self.unpack("IQQ")
        if version < 2:
            raise ValueError(f"GGUF version {version} predates the 64-bit layout this reader supports")
        metadata = {}
        for _ in range(kv_count):
            key = self.string()
            (value_type,) = self.unpack("I")
            metadata[key] = self.value(value_type)
        return metadata

    def unpack(self, fmt: str) -> tuple[Any, ...]:
        fmt = self.order + fmt
        values = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return values

    def string(self) -> str:
        (size,) = self.unpack("Q")
        text = self.buf[self.pos : self.pos + size].decode("utf-8")
        self.pos += size
        return text

    def value(self, value_type: int) -> Any:
        if value_type == _STRING:
            return self.string()
        if value_type == _ARRAY:
            item_type, count = self.unpack("IQ")
            if item_type in _SCALARS:  # one struct call for a whole score or token-type array
                return list(self.unpack(f"{count}{_SCALARS[item_type]}"))
            return [self.value(item_type) for _ in range(count)]
        if value_type in _SCALARS:
            return self.unpack(_SCALARS[value_type])[0]
        raise ValueError(f"unknown GGUF value type {value_type}")


def check_gguf(path: Path) -> str:
    """Return the architecture of a GGUF file that ovchat can convert; raise OvchatError otherwise."""
    return _check_metadata(Path(path), read_gguf_metadata(path))


def _check_metadata(path: Path, metadata: dict[str, Any]) -> str:
    architecture = metadata.get("general.architecture")
    if architecture not in SUPPORTED_ARCHITECTURES:
        raise OvchatError(
            f"{path} holds a {architecture!r} model; ovchat converts GGUF files of these architectures: "
            f"{', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    _tokenizer_kind(metadata)  # a tokenizer we cannot rebuild should fail here, not after the weight load
    return architecture


def _tokenizer_kind(metadata: dict[str, Any]) -> str:
    """Return "llama" (SentencePiece) or a byte-level BPE pre-tokenizer family from _PRE_TOKENIZERS."""
    model = metadata.get("tokenizer.ggml.model")
    if not metadata.get("tokenizer.ggml.tokens"):
        raise OvchatError("the GGUF file has no tokenizer vocabulary (tokenizer.ggml.tokens)")
    if model == "llama":
        if not metadata.get("tokenizer.ggml.scores"):
            raise OvchatError("the GGUF SentencePiece tokenizer has no token scores (tokenizer.ggml.scores)")
        return "llama"
    if model != "gpt2":
        raise OvchatError(
            f"the GGUF tokenizer type {model!r} is not supported; ovchat rebuilds 'gpt2' (byte-level BPE) "
            "and 'llama' (SentencePiece) tokenizers"
        )
    if not metadata.get("tokenizer.ggml.merges"):
        raise OvchatError("the GGUF BPE tokenizer has no merges (tokenizer.ggml.merges)")
    pre = metadata.get("tokenizer.ggml.pre", "gpt-2")  # old files without the key used GPT-2's regex
    if pre not in _PRE_TOKENIZERS:
        raise OvchatError(
            f"the GGUF BPE pre-tokenizer {pre!r} is not supported; ovchat supports: "
            f"{', '.join(sorted(_PRE_TOKENIZERS))}"
        )
    return _PRE_TOKENIZERS[pre]


def build_tokenizer(metadata: dict[str, Any]) -> PreTrainedTokenizerFast:
    """Rebuild the tokenizer stored in GGUF metadata as a transformers fast tokenizer."""
    from tokenizers import AddedToken, processors
    from transformers import PreTrainedTokenizerFast

    kind = _tokenizer_kind(metadata)
    tokens: list[str] = metadata["tokenizer.ggml.tokens"]
    types: list[int] = metadata.get("tokenizer.ggml.token_type") or [_NORMAL] * len(tokens)
    if kind == "llama":
        tokenizer = _sentencepiece_tokenizer(metadata, tokens, types)
    else:
        tokenizer = _byte_level_tokenizer(metadata, tokens, kind)
    # Added tokens are matched in the raw text before pre-tokenization, so chat markers stay one id each.
    phi3 = metadata.get("general.architecture") == "phi3"
    controls = [tokens[i] for i, token_type in enumerate(types) if token_type in (_UNKNOWN, _CONTROL)]
    tokenizer.add_special_tokens(
        [AddedToken(t, special=True, normalized=False, rstrip=phi3 and t not in _PHI3_NO_RSTRIP) for t in controls]
    )
    user_defined = [tokens[i] for i, token_type in enumerate(types) if token_type == _USER_DEFINED]
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in user_defined])

    ids = {name: metadata.get(f"tokenizer.ggml.{key}") for name, key in _SPECIAL_IDS}
    special = {name: tokens[i] for name, i in ids.items() if i is not None and 0 <= i < len(tokens)}
    # llama.cpp adds a bos by default to SentencePiece vocabularies only, when the file does not say.
    add_bos = bool(metadata.get("tokenizer.ggml.add_bos_token", kind == "llama")) and "bos_token" in special
    add_eos = bool(metadata.get("tokenizer.ggml.add_eos_token")) and "eos_token" in special
    bos, eos = special.get("bos_token"), special.get("eos_token")

    def sequence(piece: str, type_id: int) -> list[str]:
        return [f"{bos}:{type_id}"] * add_bos + [f"{piece}:{type_id}"] + [f"{eos}:{type_id}"] * add_eos

    tokenizer.post_processor = processors.TemplateProcessing(
        single=sequence("$A", 0),
        pair=sequence("$A", 0) + sequence("$B", 1),
        special_tokens=[(bos, ids["bos_token"])] * add_bos + [(eos, ids["eos_token"])] * add_eos,
    )
    extra: dict[str, Any] = {}
    if "tokenizer.chat_template" in metadata:
        extra["chat_template"] = metadata["tokenizer.chat_template"]
    context = metadata.get(f"{metadata.get('general.architecture')}.context_length")
    if context:
        extra["model_max_length"] = context
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        **special,
        add_bos_token=add_bos,
        add_eos_token=add_eos,
        clean_up_tokenization_spaces=False,  # decode must give back the text exactly
        **extra,
    )


def _byte_level_tokenizer(metadata: dict[str, Any], tokens: list[str], family: str) -> Tokenizer:
    from tokenizers import Regex, Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE

    merges = []
    for merge in metadata["tokenizer.ggml.merges"]:
        cut = merge.index(" ", 1)  # as llama.cpp: the separator is the first space after the first character
        merges.append((merge[:cut], merge[cut + 1 :]))
    vocab = {token: i for i, token in enumerate(tokens)}
    # Llama-3's tokenizer takes a pre-token that is itself in the vocabulary whole (llama.cpp does the same).
    tokenizer = Tokenizer(BPE(vocab, merges, ignore_merges=family == "llama3"))
    if family in ("llama3", "qwen2"):
        regex = _LLAMA3_REGEX if family == "llama3" else _QWEN2_REGEX
        steps = [
            pre_tokenizers.Split(Regex(regex), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    else:
        steps = [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
        if family == "digits":
            steps.insert(0, pre_tokenizers.Digits(individual_digits=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(steps)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def _sentencepiece_tokenizer(metadata: dict[str, Any], tokens: list[str], types: list[int]) -> Tokenizer:
    from tokenizers import Tokenizer, decoders, normalizers
    from tokenizers.models import BPE

    vocab = {token: i for i, token in enumerate(tokens)}
    scores: list[float] = metadata["tokenizer.ggml.scores"]
    # llama.cpp's SentencePiece tokenizer repeatedly joins the adjacent pair whose union is the best-scored
    # vocabulary piece. As BPE merges: every split of a normal piece into two normal pieces, best score first.
    normal = {token for token, kind in zip(tokens, types, strict=True) if kind == _NORMAL}
    ranked = []
    for token in normal:
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in normal and right in normal:
                ranked.append((-scores[vocab[token]], vocab[left], vocab[right], left, right))
    ranked.sort()
    unk_id = metadata.get("tokenizer.ggml.unknown_token_id")
    unk = tokens[unk_id] if unk_id is not None and 0 <= unk_id < len(tokens) else None
    # byte_fallback: a character missing from the vocabulary becomes its UTF-8 <0xNN> byte tokens.
    merges = [(left, right) for *_, left, right in ranked]
    tokenizer = Tokenizer(BPE(vocab, merges, unk_token=unk, fuse_unk=True, byte_fallback=True))
    # As llama.cpp (and Phi-3's tokenizer.json): every text run, including one after a special token, gets a
    # leading "▁" and spaces become "▁". A normalizer, not Metaspace, so " x" keeps both spaces ("▁▁x").
    add_prefix = bool(metadata.get("tokenizer.ggml.add_space_prefix", True))  # llama.cpp's SPM default
    steps = [normalizers.Prepend("▁")] if add_prefix else []
    tokenizer.normalizer = normalizers.Sequence([*steps, normalizers.Replace(" ", "▁")])
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_prefix:
        steps.append(decoders.Strip(content=" ", left=1, right=0))
    tokenizer.decoder = decoders.Sequence(steps)
    return tokenizer


def gguf_to_hf(path: Path, out_dir: Path) -> Path:
    """Write a Hugging Face model folder (float32 safetensors, config, tokenizer) for a GGUF file."""
    path, out_dir = Path(path), Path(out_dir)
    metadata = read_gguf_metadata(path)
    architecture = _check_metadata(path, metadata)
    tokenizer = build_tokenizer(metadata)  # before the slow weight load, so a vocabulary problem fails fast

    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # ovchat prints its own progress lines
    try:
        # Only the named file is read from its folder; the folder's other files are ignored.
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    except (ValueError, NotImplementedError, KeyError) as err:
        raise OvchatError(f"transformers could not load the weights of {path}: {err}") from err

    # The metadata ids, whatever transformers' GGUF mapping made of them, so config and tokenizer agree.
    for name, key in _SPECIAL_IDS:
        if metadata.get(f"tokenizer.ggml.{key}") is not None:
            setattr(model.config, f"{name}_id", metadata[f"tokenizer.ggml.{key}"])
    generation = model.generation_config
    generation.bos_token_id = getattr(model.config, "bos_token_id", None)
    generation.pad_token_id = getattr(model.config, "pad_token_id", None)
    stop_keys = [f"tokenizer.ggml.{key}" for key in _STOP_IDS]
    stops = list(dict.fromkeys(metadata[key] for key in stop_keys if key in metadata))
    if stops:
        generation.eos_token_id = stops[0] if len(stops) == 1 else stops
    context = metadata.get(f"{architecture}.context_length")
    if context and getattr(model.config, "max_position_embeddings", None) is None:
        model.config.max_position_embeddings = context

    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
