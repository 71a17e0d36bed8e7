"""Random models of a real architecture, built in-process (no download).

Tests use a tiny Phi-3 to exercise the sample's model's architecture and chat format; benchmarks use a
full-width one, since speed does not depend on the weight values.
"""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

# Phi-3-mini-4k-instruct's chat template, as its tokenizer_config.json ships it.
PHI3_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)
PHI3_SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
# The tiny model is wired to answer any chat prompt with this, then `<|end|>`.
TINY_ANSWER = ["Hello", " world", "!"]
_CORPUS = "Hello world! The quick brown fox jumps over the lazy dog.\nHello, world! Is it 12 or 19?\n" * 20


def _phi3_tokenizer(vocab_size: int, chat_template: str = PHI3_CHAT_TEMPLATE):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=PHI3_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_CORPUS], trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        chat_template=chat_template,
    )


def _single_id(tokenizer, text: str) -> int:
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(f"{text!r} is not one token in the tiny vocabulary: {ids}")
    return ids[0]


def tiny_phi3(
    out_dir: Path,
    *,
    context_length: int = 256,
    seed: int = 0,
    chat_template: str = PHI3_CHAT_TEMPLATE,
    added_tokens: tuple[str, ...] = (),
    special_tokens: tuple[str, ...] = (),
) -> Path:
    """Write a tiny random `Phi3ForCausalLM` with Phi-3's special tokens and chat template.

    The weights are random except for a wiring that makes greedy decoding deterministic and
    recognisable: every layer's output projections are zero, so the next token depends only on the
    current one, and the lm-head maps "\\n" → "Hello" → " world" → "!" → `<|end|>`. A chat prompt
    (which ends in "<|assistant|>\\n") is therefore answered with "Hello world!" and stops at `<|end|>`.
    """
    import torch
    from transformers import GenerationConfig, Phi3Config, Phi3ForCausalLM

    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    tokenizer = _phi3_tokenizer(vocab_size=320, chat_template=chat_template)
    tokenizer.add_tokens(list(added_tokens))  # not special: kept in decoded text (as Qwen's <tool_call>)
    if special_tokens:  # dropped from decoded text (as Mistral's [TOOL_CALLS])
        tokenizer.add_special_tokens({"additional_special_tokens": list(special_tokens)})
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in PHI3_SPECIAL_TOKENS}
    config = Phi3Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=context_length,
        original_max_position_embeddings=context_length,
        bos_token_id=ids["<s>"],
        eos_token_id=ids["<|endoftext|>"],
        pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=False,
    )
    model = Phi3ForCausalLM(config).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        emb = model.model.embed_tokens.weight
        unit = emb / emb.norm(dim=-1, keepdim=True)
        head = model.lm_head.weight
        head.mul_(0.05)  # every other transition is weak and random
        chain = [_single_id(tokenizer, "\n")] + [_single_id(tokenizer, t) for t in TINY_ANSWER]
        chain.append(ids["<|end|>"])
        for prev, nxt in pairwise(chain):
            # logits = head @ norm(emb[cur]); the row aligned with emb[prev] wins after prev.
            head[nxt] = unit[prev] * 40.0
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    GenerationConfig(
        bos_token_id=ids["<s>"],
        eos_token_id=[ids["<|endoftext|>"], ids["<|end|>"]],
        pad_token_id=ids["<|endoftext|>"],
    ).save_pretrained(out_dir)
    return out_dir
