"""Phi-3-mini at full size on this machine: every measurement of docs/speed.md's full-size section, one command.

    .venv/bin/python benchmarks/phi3_full.py                     # all steps, results tagged by this CPU
    .venv/bin/python benchmarks/phi3_full.py --steps compare,summary   # some steps again
    .venv/bin/python benchmarks/phi3_full.py --layers 2 --out-dir /tmp/smoke   # the whole run, small and fast

Each step runs one of the benchmarks beside this file in its own process and writes its results as
`<benchmark>_phi3_full_<tag>` under --out-dir (the tag names the CPU: `xeon`, `epyc_avx2`, ...):
- llama: a venv with llama-cpp-python and its server, compiled on this machine (`-DGGML_NATIVE=ON`),
  and its unpacked source distribution, whose `convert_hf_to_gguf.py` makes the GGUFs; built once in
  ovchat's models directory (7 minutes on 2 AVX2 cores). --llama-python/--llama-src use your own.
- export: Phi-3-mini-4k's shape with random weights saved in bf16 as the hub ships them, exported with
  the sample's recipe (ovchat's default from 2 B parameters) and int4-sym-g128-r0.8, each export's
  peak memory and time measured against ovchat's estimate (export_memory.py).
- gguf: llama.cpp's Q4_0 and Q4_K_M of the same weights, by its own converter and quantizer (phi3_shape.py).
- compare: decode, time to first token at 32 and 512 prompt tokens and peak memory of ovchat (both
  recipes), the sample's optimum-intel path and llama.cpp (Q4_0, Q4_K_M) (compare.py).
- long: the same engines but the second recipe at a 2048-token prompt.
- chat: time to first token at each turn of a 20-turn conversation: ovchat's chat session, the sample's
  loop (the whole conversation each turn) and llama.cpp with its prefix cache (chat_turns.py).
- serve: `ovchat serve` and llama.cpp's server at 1, 4 and 8 clients (serve_load.py).
- summary: ovchat's decode and time to first token against llama.cpp's Q4_0 and the sample's path,
  from the compare results (also printed at the end of a run).
On a 2-core AMD EPYC with AVX2 a full run took an hour: llama 7 min, export 7 (the random model
built first), gguf 4, compare 9, long 17, chat 8, serve 6. Answers from random weights are noise:
this measures speed and memory, never quality.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
STEPS = ("llama", "export", "gguf", "compare", "long", "chat", "serve", "summary")
LLAMA_CPP_PYTHON = "llama-cpp-python==0.3.36"
R08 = {"group_size": 128, "ratio": 0.8, "sym": True, "awq": False, "scale_estimation": False}
R08_LABEL = "int4/int8 mix, g128 r0.8"


def cpu_tag() -> str:
    """The results' CPU tag: xeon, epyc_avx2, epyc_avx512 (vendor, and the vector width where it varies)."""
    from ovchat.precision import cpu_info

    name, flags = cpu_info()
    vendor = "xeon" if "Xeon" in name else "epyc" if "EPYC" in name else "cpu"
    width = "avx512" if "avx512f" in flags else "avx2"
    return vendor if vendor == "xeon" else f"{vendor}_{width}"


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package is missing
        return False


def run(step: str, argv: list[str]) -> None:
    """One benchmark in its own process; a failed step stops the run, naming it."""
    print(f"\n== {step}: {' '.join(argv)}", flush=True)
    started = time.monotonic()
    done = subprocess.run(argv, cwd=HERE.parent)
    if done.returncode:
        raise SystemExit(f"step {step} failed (exit {done.returncode}); run again with --steps {step},...")
    print(f"== {step}: {time.monotonic() - started:.0f} s", flush=True)


def llama_env(home: Path) -> tuple[str, Path]:
    """llama-cpp-python (with its server) compiled for this CPU, and its unpacked sdist: built once."""
    root = home / "bench-llama"
    python = root / "venv" / "bin" / "python"
    version = LLAMA_CPP_PYTHON.split("==")[1]
    src = root / f"llama_cpp_python-{version}"
    if not (src / "vendor" / "llama.cpp" / "convert_hf_to_gguf.py").is_file():
        root.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                        LLAMA_CPP_PYTHON, "-d", str(root)], check=True)
        subprocess.run(["tar", "xzf", str(root / f"{src.name}.tar.gz"), "-C", str(root)], check=True)
    probe = [str(python), "-c", "import llama_cpp, llama_cpp.server, uvicorn"]
    if not python.is_file() or subprocess.run(probe, capture_output=True).returncode:
        subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True)
        env = {**os.environ, "CMAKE_ARGS": "-DGGML_NATIVE=ON"}
        print(f"compiling {LLAMA_CPP_PYTHON} for this CPU (minutes: 7 on 2 AVX2 cores)", flush=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-binary", "llama-cpp-python",
                        f"{src}[server]"], check=True, env=env)
    return str(python), src


def summary(*results: Path) -> str:
    """ovchat's default (the sample's recipe) against llama.cpp's Q4_0 and Q4_K_M, the sample's own path
    and the other recipe, from compare.py's results."""
    lines = []
    for result in results:
        path = result.with_suffix(".json")
        if not path.is_file():
            continue
        report = json.loads(path.read_text())
        rows = {r["engine"]: r for r in report["rows"]}
        ours = rows.get("ovchat-sample")
        if not ours:
            continue
        m = report["machine"]
        lines.append(f"{report['model']}, {m['cpu']} ({' '.join(m['isa'])}), {m['cores']} cores ({path.name}):")
        for other in ("llama.cpp", "llama.cpp-q4km", "optimum", "ovchat-best"):
            if other not in rows:
                continue
            theirs = rows[other]
            ttft = ", ".join(f"{n}: {theirs['ttft_ms'][n] / ours['ttft_ms'][n]:.2f}×" for n in ours["ttft_ms"])
            lines.append(f"  against {other} ({theirs['weights']}): decode {ours['decode_tok_s']} / "
                         f"{theirs['decode_tok_s']} tok/s = {ours['decode_tok_s'] / theirs['decode_tok_s']:.2f}×; "
                         f"time to first token, theirs ÷ ours at {ttft}")
    return "\n".join(lines) or f"no compare results yet: {', '.join(str(r) for r in results)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default=",".join(STEPS), help="comma-separated, of: " + ", ".join(STEPS))
    parser.add_argument("--layers", type=int, default=32, help="decoder layers (32: Phi-3-mini's full size)")
    parser.add_argument("--tag", help="the CPU's name in the results files (default: from this CPU)")
    parser.add_argument("--out-dir", type=Path, default=HERE / "results")
    parser.add_argument("--llama-python", help="a Python with llama-cpp-python[server] (default: build one)")
    parser.add_argument("--llama-src", type=Path, help="with --llama-python: its unpacked source distribution")
    args = parser.parse_args()
    steps = args.steps.split(",")
    if unknown := set(steps) - set(STEPS):
        parser.error(f"unknown steps {sorted(unknown)}: choose from {', '.join(STEPS)}")
    if bool(args.llama_python) != bool(args.llama_src):
        parser.error("--llama-python and --llama-src go together")
    if "export" in steps and not all(installed(m) for m in ("sentencepiece", "google.protobuf")):
        parser.error("the random model's tokenizer needs sentencepiece and protobuf: pip install 'ovchat[bench]'")

    from ovchat import catalog
    from ovchat.build.recipe import SAMPLE_RECIPE

    home = catalog.models_home()
    tag = args.tag or cpu_tag()
    name = f"random-phi3-shape-{args.layers}l"
    folder = home / "models" / f"{name}-{SAMPLE_RECIPE.tag}"
    gguf = home / "bench-src" / f"{name}.Q4_0.gguf"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    size = "phi3_full" if args.layers == 32 else f"phi3_{args.layers}l"
    out = {s: args.out_dir / f"{s}_{size}_{tag}" for s in ("compare", "chat_turns", "serve_load")}
    out["compare_2048"] = args.out_dir / f"compare_{size}_2048_{tag}"
    llama_python, llama_src = args.llama_python, args.llama_src
    if not llama_python and set(steps) & {"llama", "gguf", "compare", "long", "chat", "serve"}:
        llama_python, llama_src = llama_env(home)
    r08 = json.dumps(R08)
    layers, llama = ["--layers", str(args.layers)], ["--llama-python", llama_python or ""]
    shape = ["benchmarks/compare.py", "--model", "phi3-shape", *layers, *llama, "--rounds", "1", "--runs", "1"]
    on_folder = ["--model", str(folder), *llama, "--gguf", str(gguf)]
    commands = {  # step: the benchmark and its arguments, as docs/speed.md quotes them
        "export": ["benchmarks/export_memory.py", "--models", f"phi3-{args.layers}l", "--recipes",
                   "sample,g128-r0.8", "--keep", "--tag", tag, "--out-dir", str(args.out_dir)],
        "gguf": ["benchmarks/phi3_shape.py", *layers, "--recipe", r08, *llama, "--llama-src", str(llama_src)],
        "compare": [*shape, "--engines", "ovchat-sample,ovchat-best,optimum,llama.cpp,llama.cpp-q4km",
                    "--best-recipe", r08, "--best-label", R08_LABEL, "--prompt-tokens", "32,512",
                    "--new-tokens", "32", "--out", str(out["compare"])],
        "long": [*shape, "--engines", "ovchat-sample,optimum,llama.cpp,llama.cpp-q4km", "--prompt-tokens", "2048",
                 "--new-tokens", "8", "--out", str(out["compare_2048"])],
        "chat": ["benchmarks/chat_turns.py", *on_folder, "--turns", "20", "--runs", "1", "--max-new-tokens", "32",
                 "--out", str(out["chat_turns"])],
        "serve": ["benchmarks/serve_load.py", *on_folder, "--levels", "1,4,8", "--max-tokens", "32",
                  "--per-level", "8", "--rounds", "1", "--out", str(out["serve_load"])],
    }
    for step, argv in commands.items():
        if step in steps:
            run(step, [sys.executable, *argv])
    print("\n" + summary(out["compare"], out["compare_2048"]))


if __name__ == "__main__":
    main()
