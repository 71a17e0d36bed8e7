"""A Phi-3-mini-shaped model with random weights, as ovchat's export and as llama.cpp's Q4_0 GGUF.

Speed depends on shapes, not weight values. This builds `Phi3ForCausalLM` with Phi-3-mini-4k's
widths (hidden 3072, intermediate 8192, 32 heads, vocab 32064, untied head) and --layers of its 32
decoder layers (--layers 32: the full 3.8 B, saved in bf16 as the hub ships it), then:
- exports it with the Phi-3 sample's recipe and ovchat's default for its size (and, with --recipe,
  others: spell out their fields);
- converts it with the `convert_hf_to_gguf.py` that ships in llama-cpp-python's source distribution
  and quantizes it to Q4_0 and Q4_K_M with llama-cpp-python's own quantizer.
The tokenizer is a SentencePiece model trained on the novels ovchat ships for `ovchat eval`
(vocabulary padded to 32064 as Phi-3's is), with Phi-3's chat tokens and template; it needs
`pip install 'ovchat[bench]'` (sentencepiece, protobuf) beside ovchat[export]. The answers are noise:
never use it for quality.

    .venv/bin/python benchmarks/phi3_shape.py --llama-python PY \\
        --llama-src llama_cpp_python-0.3.36/   # the unpacked sdist (pip download --no-binary :all:)
Prints a JSON object with the folders and files made.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

CHAT_TOKENS = ["<|endoftext|>", "<|assistant|>", "<|system|>", "<|end|>", "<|user|>"]
QUANTIZE = """
import sys, llama_cpp
params = llama_cpp.llama_model_quantize_default_params()
params.ftype = getattr(llama_cpp, "LLAMA_FTYPE_MOSTLY_" + sys.argv[3])
params.nthread = 2
rc = llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), params)
sys.exit(rc)
"""


def tokenizer_files(out: Path) -> None:
    import sentencepiece as spm  # and protobuf, for transformers to read the model: benchmark-only needs
    from transformers import AutoTokenizer

    from ovchat.eval.scoring import DATA
    from ovchat.synthetic import PHI3_CHAT_TEMPLATE

    text = [DATA / "alice_in_wonderland_ch1-6.txt", DATA / "pride_and_prejudice_ch1-39.txt"]
    spm.SentencePieceTrainer.train(
        input=",".join(map(str, text)),
        model_prefix=str(out / "tokenizer"),
        vocab_size=8000,
        model_type="bpe",
        byte_fallback=True,
        bos_id=1,
        eos_id=2,
        unk_id=0,
        minloglevel=2,
    )
    # transformers turns a SentencePiece model into its fast tokenizer when it finds only tokenizer.model.
    (out / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "LlamaTokenizer", "legacy": False}))
    tokenizer = AutoTokenizer.from_pretrained(out)
    if len(tokenizer) < 8000:
        raise SystemExit("the tokenizer did not load its SentencePiece model: pip install 'ovchat[bench]'")
    tokenizer.add_special_tokens({"additional_special_tokens": CHAT_TOKENS})
    tokenizer.chat_template = PHI3_CHAT_TEMPLATE
    tokenizer.eos_token = "<|endoftext|>"
    tokenizer.pad_token = "<|endoftext|>"
    tokenizer.save_pretrained(out)


def build(out: Path, layers: int) -> Path:
    import torch
    from transformers import AutoTokenizer, GenerationConfig, Phi3Config, Phi3ForCausalLM

    out.mkdir(parents=True, exist_ok=True)
    tokenizer_files(out)
    tok = AutoTokenizer.from_pretrained(out)
    ids = {t: tok.convert_tokens_to_ids(t) for t in CHAT_TOKENS}
    config = Phi3Config(
        vocab_size=32064,
        hidden_size=3072,
        intermediate_size=8192,
        num_hidden_layers=layers,
        num_attention_heads=32,
        num_key_value_heads=32,
        max_position_embeddings=4096,
        original_max_position_embeddings=4096,
        rope_theta=10000.0,
        bos_token_id=1,
        eos_token_id=ids["<|endoftext|>"],
        pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    # Built in bf16, as the hub ships Phi-3: built in float32 first, all 32 layers would need 15 GB.
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        model = Phi3ForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(default)
    model.save_pretrained(out)
    del model
    GenerationConfig(
        bos_token_id=1, eos_token_id=[ids["<|endoftext|>"], ids["<|end|>"]], pad_token_id=ids["<|endoftext|>"]
    ).save_pretrained(out)
    return out


def to_gguf(
    source: Path, llama_src: Path, llama_python: str, out: Path, ftype: str = "Q4_0", outtype: str = "f16",
    keep_float: bool = False,
) -> Path:
    """`source` (an HF folder) → GGUF in `outtype` → llama.cpp's quantizer at `ftype` (Q4_0, Q4_1, Q4_K_M, ...).
    The float GGUF is made once per source and kept while `keep_float` (more quantizations to come)."""
    root = llama_src / "vendor" / "llama.cpp"
    float_gguf = out.parent / f"{source.name}.{outtype}.gguf"
    if not float_gguf.is_file():
        cmd = [sys.executable, str(root / "convert_hf_to_gguf.py"), str(source), "--outtype", outtype]
        subprocess.run([*cmd, "--outfile", str(float_gguf)], check=True,
                       env={"PYTHONPATH": f"{root / 'gguf-py'}", "PATH": "/usr/bin:/bin"})
    subprocess.run([llama_python, "-c", QUANTIZE, str(float_gguf), str(out), ftype], check=True)
    if not keep_float:
        float_gguf.unlink()
    return out


def source_folder(layers: int) -> Path:
    """The random Phi-3-shaped Hugging Face folder with `layers` layers, built once in the models directory."""
    from ovchat import catalog

    home = catalog.models_home()
    name = f"random-phi3-shape-{layers}l"
    source = home / "bench-src" / name
    if not (source / "config.json").is_file():
        source.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=home) as tmp:
            build(Path(tmp) / name, layers).rename(source)
    return source


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--llama-python", help="python of a venv with llama-cpp-python (omit: no GGUF)")
    parser.add_argument("--llama-src", type=Path, help="llama-cpp-python's unpacked source distribution")
    parser.add_argument("--recipe", action="append", default=[], help="another ovchat Recipe as JSON (repeatable)")
    args = parser.parse_args()

    import ovchat
    from ovchat import catalog
    from ovchat.build.recipe import SAMPLE_RECIPE, Recipe, default_recipe

    home = catalog.models_home()
    name = f"random-phi3-shape-{args.layers}l"
    source = source_folder(args.layers)
    made = {"source": str(source), "layers": args.layers}
    from ovchat.build.estimate import parameters

    # The sample's, ovchat's default for this size, and any asked for (a JSON object per --recipe)
    recipes = [SAMPLE_RECIPE, default_recipe(parameters(source)[0])] + [Recipe(**json.loads(r)) for r in args.recipe]
    for recipe in recipes:
        target = home / "models" / f"{name}-{recipe.tag}"
        if not (target / "ovchat_manifest.json").is_file():
            ovchat.export(str(source), str(target), **asdict(recipe), force=target.exists())
        made[recipe.tag] = str(target)
    if args.llama_python and args.llama_src:
        for ftype in ("Q4_0", "Q4_K_M"):
            gguf = home / "bench-src" / f"{name}.{ftype}.gguf"
            if not gguf.is_file():
                to_gguf(source, args.llama_src, args.llama_python, gguf, ftype, keep_float=ftype == "Q4_0")
            made[ftype] = str(gguf)
    print(json.dumps(made, indent=1))


if __name__ == "__main__":
    main()
