"""The one model a server answers for: its name, context, tokenizer, stop ids and sizes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .. import runtime
from ..sampling import CHAT_SAMPLING, SamplingParams
from ..tool_formats import CallFormat, chat_template, detect


@dataclass
class Served:
    """The one model this server answers for, with what the HTTP side needs of it."""

    name: str
    path: Path
    context_length: int
    tokenizer: object
    stop_ids: set[int]
    vocab_size: int
    created: int  # when the folder was exported (its mtime): OpenAI's model "created"
    config: dict  # config.json: architecture sizes
    sampling: SamplingParams = SamplingParams(**CHAT_SAMPLING)  # for the fields a request leaves out (load sets it)
    sampling_source: str = "ovchat's default"
    tool_format: CallFormat | None = None  # the chat template's own tool-call format, if ovchat writes it
    info: dict | None = None  # the export's manifest (None for a folder ovchat did not export)

    @classmethod
    def load(cls, path: Path, info: dict | None, context_cap: int | None) -> Served:
        import openvino_genai as ov_genai

        tokenizer = runtime.use_folder_template(ov_genai.Tokenizer(str(path)), path)
        config = runtime.model_config(path)
        stops = runtime.stop_token_ids(tokenizer, runtime.configured_stop_ids(path))
        context = runtime.context_length(path)
        if context_cap:
            context = min(context, context_cap)
        vocab = config.get("vocab_size") if isinstance(config.get("vocab_size"), int) else None
        vocab = vocab or len(tokenizer.get_vocab_vector())
        created = int(path.stat().st_mtime)
        sampling, source = runtime.recommended_sampling(path, info)
        name = runtime.model_name(path, info)
        tool_format = detect(chat_template(path, tokenizer))
        return cls(name, path, context, tokenizer, stops, vocab, created, config, sampling, source, tool_format, info)

    def kv_bytes_per_token(self, precision: str) -> int:
        config = self.config
        layers = config.get("num_hidden_layers", 32)
        heads = config.get("num_attention_heads", 32)
        kv_heads = config.get("num_key_value_heads") or heads
        head_dim = config.get("head_dim") or config.get("hidden_size", 4096) // heads
        width = {"f32": 4, "f16": 2, "bf16": 2, "u8": 1}.get(precision, 4)
        return 2 * layers * kv_heads * head_dim * width

    def parameter_count(self) -> int:
        """About how many parameters config.json describes (a decoder-only transformer's weights)."""
        c = self.config
        width, layers = c.get("hidden_size", 0), c.get("num_hidden_layers", 0)
        heads = c.get("num_attention_heads") or 1
        kv_width = (c.get("num_key_value_heads") or heads) * (c.get("head_dim") or width // heads)
        attention = 2 * width * width + 2 * width * kv_width  # q and o, k and v
        mlp = 3 * width * c.get("intermediate_size", 4 * width)  # gate, up, down
        embeddings = self.vocab_size * width * (1 if c.get("tie_word_embeddings") else 2)
        return layers * (attention + mlp) + embeddings
