"""A random-weight model of a real architecture, exported with ovchat's default recipe, for benchmarks.

Speed depends on the shapes, not the weight values, so a model of SmolLM2-360M-Instruct's exact
architecture with random weights (and SmolLM2's own tokenizer and chat template, taken from the
135M export) measures what the real 360M would. Its answers are noise: never use it for quality.

    .venv/bin/python benchmarks/random_model.py [--shape smollm2-360m]   # prints the exported folder
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

SHAPES = {
    # HF config fields of the real models (config.json on the hub).
    "smollm2-360m": dict(hidden_size=960, intermediate_size=2560, num_hidden_layers=32, num_attention_heads=15,
                         num_key_value_heads=5, vocab_size=49152, max_position_embeddings=8192, rope_theta=100000.0,
                         tie_word_embeddings=True, rms_norm_eps=1e-5),
    "smollm2-1.7b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=24, num_attention_heads=32,
                         num_key_value_heads=32, vocab_size=49152, max_position_embeddings=8192, rope_theta=130000.0,
                         tie_word_embeddings=True, rms_norm_eps=1e-5),
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json")


def build(shape: str, out: Path) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from ovchat.build.export import ensure_exported

    donor = ensure_exported("smollm2-135m")  # the tokenizer and template of the SmolLM2 family
    torch.manual_seed(0)
    config = LlamaConfig(**SHAPES[shape], bos_token_id=1, eos_token_id=2, pad_token_id=2)
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(out)
    for name in TOKENIZER_FILES:
        if (donor / name).is_file():
            shutil.copy(donor / name, out / name)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="smollm2-360m")
    args = parser.parse_args()
    import ovchat
    from ovchat import catalog

    target = catalog.models_home() / "models" / f"random-{args.shape}-int4"
    if not (target / "ovchat_manifest.json").is_file():
        with tempfile.TemporaryDirectory() as tmp:
            source = build(args.shape, Path(tmp) / f"random-{args.shape}")
            ovchat.export(str(source), str(target), force=target.exists())
    print(target)


if __name__ == "__main__":
    main()
