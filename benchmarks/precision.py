"""Which precision runs fastest here: ovchat's export under several OpenVINO precision settings, side by side.

    .venv/bin/python benchmarks/precision.py --model smollm2 --rounds 3
    .venv/bin/python benchmarks/precision.py --model phi3-shape --layers 8 --new-tokens 64

Each variant is a set of OpenVINO properties (inference precision, KV-cache precision, int8
activations' group size) for the same exported folder, run by compare_worker in a fresh process per
round, rounds interleaving the variants; medians are reported. Variants a CPU cannot run (bf16
without AVX-512 BF16) are left out and said so. Writes benchmarks/results/precision_<model>_<recipe>.{md,json}
(or the name --out gives).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

from compare import RESULTS, memory_bandwidth_gbs, reproduce, run_worker, weight_bytes

# name: (inference, KV cache, dynamic-quantization group; 0 = off)
VARIANTS = {
    "f32 / u8 / dq32": ("f32", "u8", 32),
    "f32 / u8 / dq128": ("f32", "u8", 128),
    "f32 / u8 / off": ("f32", "u8", 0),
    "f32 / f32 / off": ("f32", "f32", 0),
    "bf16 / u8 / dq32": ("bf16", "u8", 32),
    "bf16 / u8 / off": ("bf16", "u8", 0),
    "bf16 / bf16 / off": ("bf16", "bf16", 0),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["smollm2", "phi3-shape"], default="smollm2")
    parser.add_argument("--layers", type=int, default=8, help="phi3-shape: decoder layers (as built)")
    parser.add_argument("--recipe", default="{}", help="ovchat Recipe JSON of the export (default: the default)")
    parser.add_argument("--variants", help="comma-separated subset of: " + ", ".join(VARIANTS))
    parser.add_argument("--prompt-tokens", default="32,512")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", help="results name under benchmarks/results (default: precision_<model>_<recipe>)")
    args = parser.parse_args()

    import ovchat
    from ovchat import bench, catalog, precision
    from ovchat.build.export import ensure_exported
    from ovchat.build.recipe import Recipe

    recipe = Recipe(**json.loads(args.recipe))
    if args.model == "smollm2":
        folder, name = ensure_exported("smollm2-135m", recipe), "SmolLM2-135M-Instruct"
    else:
        folder = catalog.models_home() / "models" / f"random-phi3-shape-{args.layers}l-{recipe.tag}"
        name = f"Phi-3-mini shape, random weights, {args.layers} of 32 layers"
        if not folder.is_dir():
            raise SystemExit(f"{folder} is missing: run benchmarks/phi3_shape.py --layers {args.layers} first")
    chosen = {k: v for k, v in VARIANTS.items() if not args.variants or k in args.variants.split(",")}
    if "BF16" not in precision.capabilities("CPU"):
        print("this CPU has no bf16: bf16 variants left out", file=sys.stderr)
        chosen = {k: v for k, v in chosen.items() if v[0] != "bf16"}
    if not precision.has_vnni():  # OpenVINO would run them without int8 activations: not what they say
        print("this CPU has no VNNI: int8-activation variants left out", file=sys.stderr)
        chosen = {k: v for k, v in chosen.items() if not v[2]}
    tokenizer = ovchat.load(str(folder)).tokenizer
    lengths = [int(n) for n in args.prompt_tokens.split(",")]
    bandwidth = memory_bandwidth_gbs()
    samples = {k: {"ttft": {n: [] for n in lengths}, "decode": []} for k in chosen}
    variant = 0
    for round_ in range(args.rounds):
        for key, (inference, kv, group) in chosen.items():
            prompts = {}
            for n in lengths:
                prompts[str(n)] = []
                for _ in range(args.runs + 1):
                    variant += 1
                    prompts[str(n)].append(bench.exact_prompt(tokenizer, n, variant))
            config = precision.Precision(inference, kv, group).properties()
            spec = {"engine": "ovchat", "model": str(folder), "python": sys.executable, "config": config,
                    "prompts": prompts, "new_tokens": args.new_tokens, "threads": 2, "warmup": 1,
                    "cache_dir": str(catalog.compile_cache_dir())}
            result = run_worker(spec)
            for row in result["rows"]:
                samples[key]["ttft"][row["prompt_tokens"]] += row["ttft_ms"]
                samples[key]["decode"] += row["decode_tok_s"]
            print(f"round {round_ + 1}/{args.rounds} {key:18s} decode "
                  f"{statistics.median(result['rows'][0]['decode_tok_s']):6.1f} tok/s", file=sys.stderr)
    ceiling = bandwidth * 1e9 / weight_bytes(folder)
    rows = [{"variant": k, "inference": v[0], "kv_cache": v[1], "dynamic_quantization": v[2],
             "decode_tok_s": round(statistics.median(samples[k]["decode"]), 1),
             "decode_range": [round(min(samples[k]["decode"]), 1), round(max(samples[k]["decode"]), 1)],
             "ttft_ms": {n: round(statistics.median(samples[k]["ttft"][n]), 1) for n in lengths}}
            for k, v in chosen.items()]
    report = {
        "model": name, "recipe": recipe.tag, "machine": bench.machine(), "memory_bandwidth_gbs": round(bandwidth, 1),
        "ceiling_tok_s": round(ceiling, 1), "new_tokens": args.new_tokens, "runs": args.runs, "rounds": args.rounds,
        "date": time.strftime("%Y-%m-%d"), "command": reproduce("precision.py"),
        "rows": rows,
    }
    m = report["machine"]
    lines = [f"# {name} ({recipe.tag}): precision settings side by side\n",
             f"{m['cpu']}, {m['cores']} cores ({' '.join(m['isa'])}), OpenVINO {m['openvino']}; memory read "
             f"bandwidth {report['memory_bandwidth_gbs']} GB/s (decode ceiling {report['ceiling_tok_s']} tok/s). "
             f"{args.new_tokens} new tokens, greedy; medians over {args.rounds} rounds × {args.runs} runs, "
             f"a fresh process per variant and round. {report['date']}, `{report['command']}`.\n",
             "| inference / KV cache / int8 activations | decode tok/s (min–max) | % of ceiling | "
             + " | ".join(f"TTFT {n} ms" for n in lengths) + " |",
             "|---|---|---|" + "---|" * len(lengths)]
    for r in rows:
        spread = f"{r['decode_range'][0]:.0f}–{r['decode_range'][1]:.0f}"
        lines.append(f"| {r['variant']} | {r['decode_tok_s']} ({spread}) | "
                     f"{100 * r['decode_tok_s'] / ceiling:.0f}% | "
                     + " | ".join(f"{r['ttft_ms'][n]:.0f}" for n in lengths) + " |")
    out = RESULTS / (args.out or f"precision_{args.model.replace('-', '_')}_{recipe.tag}")
    out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
