"""The comparison we publish: ovchat against the sample's path, PyTorch and llama.cpp, on one machine.

    .venv/bin/python benchmarks/compare.py --llama-python PY [--rounds 3]

(PY: a Python that has llama-cpp-python, e.g. /path/to/venv/bin/python.)

Engines, each in its own fresh process per round (rounds interleave the engines, so drift in the
machine's speed spreads over all of them; medians are reported):
- ovchat-sample: ovchat (OpenVINO GenAI) on the sample's recipe (int4 sym, group 128, ratio 0.6);
- ovchat-best: ovchat on the recipe and runtime settings we ship as the best (see --best-*);
- optimum: the sample's own path, optimum-intel OVModelForCausalLM + transformers generate, same IR;
- torch: transformers + PyTorch fp32, the unoptimised baseline;
- llama.cpp: llama-cpp-python on the GGUF (the original Q4_1 file), same thread count; for the Phi-3
  shape, Q4_0 and (llama.cpp-q4km, where phi3_shape.py made it) Q4_K_M of the same weights;
- ceiling: measured memory read bandwidth ÷ the bytes of weights one decode step reads.
All engines get the same token ids and generate exactly --new-tokens greedily (see compare_worker).
Writes benchmarks/results/compare.{md,json,png}. llama-cpp-python is optional: build it in a venv of
its own (`pip install llama-cpp-python`, ~10 minutes on 2 cores) and pass its python.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
WORKER = HERE / "compare_worker.py"


def memory_bandwidth_gbs(gib: float = 1.0, repeats: int = 5) -> float:
    """Best read rate over a buffer far larger than the caches, with one and with all cores."""
    import numpy as np

    data = np.ones(int(gib * (1 << 30)) // 4, dtype=np.float32)
    best = 0.0
    for threads in sorted({1, os.cpu_count() or 1}):
        parts = np.array_split(data, threads)
        for _ in range(repeats):
            workers = [threading.Thread(target=part.max) for part in parts]  # numpy lets go of the GIL
            started = time.perf_counter()
            for w in workers:
                w.start()
            for w in workers:
                w.join()
            best = max(best, data.nbytes / (time.perf_counter() - started) / 1e9)
    return best


def weight_bytes(path: Path) -> int:
    """Bytes of weights on disk: a decode step reads (about) all of them once."""
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.glob("*.bin") if f.name.startswith("openvino_model"))


def folder_mb(path: Path) -> float:
    files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
    return sum(f.stat().st_size for f in files) / 1e6


def prepare_smollm2(args) -> dict:
    """The engines' inputs for SmolLM2-135M-Instruct: the GGUF, an fp32 HF folder, two exports."""
    import ovchat
    from ovchat import catalog
    from ovchat.build.export import ensure_exported
    from ovchat.build.gguf import gguf_to_hf
    from ovchat.build.recipe import SAMPLE_RECIPE, Recipe

    gguf = catalog.materialize(catalog.resolve("smollm2-135m"))
    hf = catalog.models_home() / "bench-src" / "smollm2-135m-hf"
    if not (hf / "config.json").is_file():
        gguf_to_hf(gguf, hf)
    seed = ensure_exported("smollm2-135m", SAMPLE_RECIPE)
    best = ensure_exported("smollm2-135m", Recipe(**json.loads(args.best_recipe)))
    tokenizer = ovchat.load(str(seed)).tokenizer
    return {
        "gguf": gguf,
        "gguf_label": "GGUF Q4_1 (the original)",
        "hf": hf,
        "seed": seed,
        "best": best,
        "tokenizer": tokenizer,
        "name": "SmolLM2-135M-Instruct",
    }


def prepare_phi3_shape(args) -> dict:
    """The same for the random Phi-3-mini-shaped model that benchmarks/phi3_shape.py builds."""
    import ovchat
    from ovchat import catalog
    from ovchat.build.recipe import SAMPLE_RECIPE, Recipe

    home = catalog.models_home()
    name = f"random-phi3-shape-{args.layers}l"
    seed = home / "models" / f"{name}-{SAMPLE_RECIPE.tag}"
    best = home / "models" / f"{name}-{Recipe(**json.loads(args.best_recipe)).tag}"
    gguf = home / "bench-src" / f"{name}.Q4_0.gguf"
    wanted = args.engines.split(",") if args.engines else ["ovchat-best"]
    for path in (seed, best if "ovchat-best" in wanted else seed, gguf):
        if not path.exists():
            raise SystemExit(f"{path} is missing: run benchmarks/phi3_shape.py --layers {args.layers} first")
    gguf_k = home / "bench-src" / f"{name}.Q4_K_M.gguf"
    return {
        "gguf": gguf,
        "gguf_k": gguf_k if gguf_k.is_file() else None,
        "gguf_label": "GGUF Q4_0",
        "hf": home / "bench-src" / name,
        "seed": seed,
        "best": best,
        "tokenizer": ovchat.load(str(seed)).tokenizer,
        "name": f"Phi-3-mini shape, random weights, {args.layers} of 32 layers",
    }


def engines(inputs: dict, args) -> dict[str, dict]:
    python = sys.executable
    chosen = {
        "ovchat-sample": {
            "engine": "ovchat",
            "model": str(inputs["seed"]),
            "python": python,
            "weights": "int4/int8 mix (sample)",
        },
        "ovchat-best": {
            "engine": "ovchat",
            "model": str(inputs["best"]),
            "python": python,
            "config": json.loads(args.best_config),
            "weights": args.best_label,
        },
        "optimum": {
            "engine": "optimum",
            "model": str(inputs["seed"]),
            "python": python,
            "weights": "int4/int8 mix (sample)",
        },
        "torch": {"engine": "torch", "model": str(inputs["hf"]), "python": python, "weights": "fp32"},
    }
    if args.llama_python:
        chosen["llama.cpp"] = {
            "engine": "llama.cpp",
            "model": str(inputs["gguf"]),
            "python": args.llama_python,
            "weights": inputs["gguf_label"],
        }
        if inputs.get("gguf_k"):  # the same weights through llama.cpp's K-quant (Q4_K_M)
            chosen["llama.cpp-q4km"] = {**chosen["llama.cpp"], "model": str(inputs["gguf_k"]), "weights": "GGUF Q4_K_M"}
    return {name: spec for name, spec in chosen.items() if not args.engines or name in args.engines.split(",")}


def reproduce(script: str) -> str:
    """The command that made a result, to print beside it: quoted, with this machine's llama.cpp venv as PY,
    paths in the repository relative to it and models in ovchat's models directory by their names."""
    from ovchat import catalog

    home, repo = catalog.models_home(), HERE.parent

    def shown(i: int, arg: str) -> str:
        if i and argv[i - 1] == "--llama-python":
            return "PY"
        path = Path(arg)
        for root in (repo, home / "models", home / "bench-src"):
            if path.is_absolute() and path.is_relative_to(root):
                return str(path.relative_to(root))
        return arg

    argv = sys.argv[1:]
    return shlex.join(["python", f"benchmarks/{script}", *(shown(i, a) for i, a in enumerate(argv))])


def run_worker(spec: dict) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(spec, f)
    try:
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
        done = subprocess.run([spec["python"], str(WORKER), f.name], capture_output=True, text=True, env=env)
    finally:
        os.unlink(f.name)
    if done.returncode:
        raise RuntimeError(f"{spec['engine']} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["smollm2", "phi3-shape"], default="smollm2")
    parser.add_argument("--layers", type=int, default=8, help="phi3-shape: decoder layers (as built)")
    parser.add_argument("--llama-python", help="python of a venv with llama-cpp-python (omit: no llama.cpp)")
    parser.add_argument("--engines", help="comma-separated subset of the engines")
    parser.add_argument("--prompt-tokens", default="32,512")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=3, help="timed generations per prompt length and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--best-recipe", default="{}", help="ovchat Recipe JSON (default: ovchat's default recipe)")
    parser.add_argument("--best-config", default="{}", help="OpenVINO properties JSON for ovchat-best")
    parser.add_argument("--best-label", default="int4/int8 mix, AWQ + scale estimation (default)")
    parser.add_argument("--out", default=str(RESULTS / "compare"))
    args = parser.parse_args()

    from ovchat import bench, catalog

    inputs = prepare_smollm2(args) if args.model == "smollm2" else prepare_phi3_shape(args)
    lengths = [int(n) for n in args.prompt_tokens.split(",")]
    chosen = engines(inputs, args)
    print("measuring memory bandwidth ... ", end="", flush=True, file=sys.stderr)
    bandwidth = memory_bandwidth_gbs()
    print(f"{bandwidth:.1f} GB/s", file=sys.stderr)
    samples = {name: {"ttft": {n: [] for n in lengths}, "decode": [], "rss": [], "load": []} for name in chosen}
    variant = 0
    for round_ in range(args.rounds):
        for name, spec in chosen.items():
            prompts = {}
            for n in lengths:  # fresh prompts every round: no engine can serve a prefill from a cache
                prompts[str(n)] = []
                for _ in range(args.runs + 1):
                    variant += 1
                    prompts[str(n)].append(bench.exact_prompt(inputs["tokenizer"], n, variant))
            full = {
                **spec,
                "prompts": prompts,
                "new_tokens": args.new_tokens,
                "threads": args.threads,
                "warmup": 1,
                "cache_dir": str(catalog.compile_cache_dir()),
            }
            result = run_worker(full)
            for row in result["rows"]:
                samples[name]["ttft"][row["prompt_tokens"]] += row["ttft_ms"]
                samples[name]["decode"] += row["decode_tok_s"]
            samples[name]["rss"].append(result["peak_rss_mb"])
            samples[name]["load"].append(result["load_s"])
            samples[name]["precision"] = result.get("precision", "")
            decode = statistics.median(result["rows"][0]["decode_tok_s"])
            ttft = " / ".join(f"{statistics.median(r['ttft_ms']):.0f}" for r in result["rows"])
            print(
                f"round {round_ + 1}/{args.rounds} {name:12s} decode {decode:6.1f} tok/s  ttft {ttft} ms",
                file=sys.stderr,
            )

    rows = []
    for name, spec in chosen.items():
        s = samples[name]
        model_path = Path(spec["model"])
        row = {
            "engine": name,
            "weights": spec["weights"],
            "precision": s["precision"],
            "size_mb": round(folder_mb(model_path), 1),
            "load_s": round(statistics.median(s["load"]), 2),
            "ttft_ms": {n: round(statistics.median(v), 1) for n, v in s["ttft"].items()},
            "decode_tok_s": round(statistics.median(s["decode"]), 1),
            "decode_range": [round(min(s["decode"]), 1), round(max(s["decode"]), 1)],
            "peak_rss_mb": round(statistics.median(s["rss"]), 0),
        }
        if spec["engine"] in ("ovchat", "llama.cpp"):
            row["ceiling_tok_s"] = round(bandwidth * 1e9 / weight_bytes(model_path), 1)
        rows.append(row)
    report = {
        "model": inputs["name"],
        "machine": bench.machine(),
        "memory_bandwidth_gbs": round(bandwidth, 1),
        "new_tokens": args.new_tokens,
        "runs": args.runs,
        "rounds": args.rounds,
        "threads": args.threads,
        "date": time.strftime("%Y-%m-%d"),
        "command": reproduce("compare.py"),
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    out.with_suffix(".md").write_text(markdown(report, lengths))
    chart(report, lengths, out.with_suffix(".png"))
    print(markdown(report, lengths))


def markdown(report: dict, lengths: list[int]) -> str:
    m = report["machine"]
    head = (
        f"# {report['model']}: ovchat against the alternatives\n\n"
        f"{m['cpu']}, {m['cores']} cores ({' '.join(m['isa'])}), OpenVINO {m['openvino']}, "
        f"{report['threads']} threads, memory read bandwidth {report['memory_bandwidth_gbs']} GB/s. "
        f"{report['new_tokens']} new tokens, greedy, end-of-sequence ignored; medians over "
        f"{report['rounds']} rounds × {report['runs']} runs, each engine in a fresh process per round. "
        f"{report['date']}, `{report['command']}`.\n\n"
    )
    cols = ["engine", "weights", "precision", "size MB", "load s"] + [f"TTFT {n} ms" for n in lengths]
    cols += ["decode tok/s (min–max)", "peak RSS MB", "ceiling tok/s"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in report["rows"]:
        cells = [r["engine"], r["weights"], r.get("precision", ""), f"{r['size_mb']:.0f}", f"{r['load_s']:.2f}"]
        cells += [f"{r['ttft_ms'][n]:.0f}" for n in lengths]
        cells += [f"{r['decode_tok_s']:.1f} ({r['decode_range'][0]:.0f}–{r['decode_range'][1]:.0f})"]
        cells += [f"{r['peak_rss_mb']:.0f}", f"{r['ceiling_tok_s']:.0f}" if "ceiling_tok_s" in r else ""]
        lines.append("| " + " | ".join(cells) + " |")
    by = {r["engine"]: r for r in report["rows"]}
    ratios = []
    ours = "ovchat-best" if "ovchat-best" in by else "ovchat-sample"
    best = by.get(ours)
    for other in ("llama.cpp", "llama.cpp-q4km", "optimum", "torch"):
        if best and other in by:
            o = by[other]
            ttft = " · ".join(f"TTFT@{n} {best['ttft_ms'][n] / o['ttft_ms'][n]:.2f}×" for n in lengths)
            ratios.append(f"- {ours} vs {other}: decode {best['decode_tok_s'] / o['decode_tok_s']:.2f}× · {ttft}")
    return head + "\n".join(lines) + "\n\n" + "\n".join(ratios) + "\n"


def chart(report: dict, lengths: list[int], path: Path) -> None:
    from ovchat.bench import pyplot

    plt = pyplot()
    rows = report["rows"]
    names = [r["engine"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    left.barh(names, [r["decode_tok_s"] for r in rows], color="#0b63c5")
    left.set_xlabel("decode tokens/s (higher is better)")
    right.barh(names, [r["ttft_ms"][lengths[-1]] for r in rows], color="#b3261e")
    right.set_xlabel(f"time to first token, {lengths[-1]}-token prompt, ms (lower is better)")
    for axis in (left, right):
        axis.invert_yaxis()
        axis.grid(axis="x", alpha=0.3)
    fig.suptitle(f"{report['model']} on {report['machine']['cpu']}, {report['threads']} threads", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
