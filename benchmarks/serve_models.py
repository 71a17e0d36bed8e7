"""Several models in one `ovchat serve`: what loading on demand costs, and what each loaded model holds.

Starts `ovchat serve` with three exports of SmolLM2-135M (the default int4 recipe, int8, fp16: three
models of different sizes that install offline), a fresh compiled-model cache, and --max-loaded 3.
Measures, in rounds (medians):
- time to first token of a short chat answer from the model loaded at start;
- from a model loaded on demand: cold (the first load, OpenVINO compiles it) and from the compiled-
  model cache (unloaded with Ollama's keep_alive 0, then asked again);
- the resident memory of the server and its engine processes with 1, 2 and 3 models loaded.

    .venv/bin/python benchmarks/serve_models.py --tag epyc_avx2 [--rounds 5]

Writes benchmarks/results/serve_models_<tag>.md and .json. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from ovchat.bench import machine
from ovchat.build.export import ensure_exported, export

HI = [{"role": "user", "content": "Say hello in one short sentence."}]


def exports(work: Path) -> list[Path]:
    default = ensure_exported("smollm2-135m")
    others = []
    for fmt in ("int8", "fp16"):
        folder = work / f"smollm2-135m-{fmt}"
        others.append(folder if folder.is_dir() else export("smollm2-135m", folder, weight_format=fmt))
    return [default, *others]


def rss_mb(pid: int) -> float:
    """The resident memory of a process and its children (the engine processes), in MB."""
    pids = [pid] + [int(p) for p in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True,
                                                    text=True).stdout.split()]
    total = 0
    for p in pids:
        try:
            text = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        total += int(re.search(r"VmRSS:\s+(\d+)", text).group(1))
    return total / 1024


def ttft(base: str, model: str) -> float:
    body = {"model": model, "messages": HI, "max_tokens": 8, "temperature": 0, "stream": True}
    started = time.perf_counter()
    with httpx.stream("POST", base + "/v1/chat/completions", json=body, timeout=300) as response:
        for line in response.iter_lines():
            if line.startswith("data: ") and '"content": "' in line and '"content": ""' not in line:
                return time.perf_counter() - started
    raise RuntimeError(f"no token from {model}")


def loaded(base: str) -> set[str]:
    return {m["id"] for m in httpx.get(base + "/v1/models").json()["data"] if m.get("loaded")}


def unload(base: str, model: str) -> None:
    httpx.post(base + "/api/generate", json={"model": model, "prompt": "", "keep_alive": 0}, timeout=60)
    deadline = time.monotonic() + 60
    while model in loaded(base) and time.monotonic() < deadline:
        time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tag", required=True, help="names the results file: the CPU, e.g. epyc_avx2 or xeon")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.gettempdir()) / "ovchat-serve-models"
    work.mkdir(exist_ok=True)
    folders = exports(work)
    compiled = tempfile.mkdtemp(prefix="ovchat-compiled-")  # cold: nothing compiled yet
    log = open(work / "serve.log", "w")  # noqa: SIM115 (read at the end)
    cmd = [sys.executable, "-m", "ovchat.cli", "serve", "--port", "0", "--max-loaded", "3", "--keep-alive", "-1",
           "--cache-dir", compiled]
    for folder in folders:
        cmd += ["--model", str(folder)]
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        base = None
        for _ in range(1200):
            found = re.search(r"http://(\S+?):(\d+)/v1", (work / "serve.log").read_text())
            if found:
                base = f"http://{found.group(1)}:{found.group(2)}"
                try:
                    if httpx.get(base + "/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
            time.sleep(0.1)
        names = [m["id"] for m in httpx.get(base + "/v1/models").json()["data"]]
        first, second, third = names
        ttft(base, first)  # warm
        memory = {1: rss_mb(server.pid)}
        cold = ttft(base, second)  # compiled now, on demand
        memory[2] = rss_mb(server.pid)
        ttft(base, third)
        memory[3] = rss_mb(server.pid)
        resident, cached = [], []
        for _ in range(args.rounds):
            resident.append(ttft(base, first))
            unload(base, second)
            cached.append(ttft(base, second))
    finally:
        server.terminate()
        server.wait(60)
    about = machine()
    rows = {"loaded at start": statistics.median(resident), "on demand, cold (compiled now)": cold,
            "on demand, from the compiled-model cache": statistics.median(cached)}
    lines = [f"# Several models in one server: {about['cpu']}, {about['cores']} cores ({', '.join(about['isa'])})",
             "", f"`python benchmarks/serve_models.py --tag {args.tag} --rounds {args.rounds}`: SmolLM2-135M as "
             f"{', '.join(f.name for f in folders)}; OpenVINO {about['openvino']}.", "",
             "| time to first token of a short answer | seconds |", "|---|---:|"]
    lines += [f"| {name} | {value:.2f} |" for name, value in rows.items()]
    lines += ["", "| models loaded | resident memory, server + engines (MB) |", "|---:|---:|"]
    lines += [f"| {n} | {mb:.0f} |" for n, mb in memory.items()]
    out = Path(__file__).parent / "results" / f"serve_models_{args.tag}"
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"machine": about, "ttft_s": rows, "rss_mb": memory,
                                                    "resident_rounds": resident, "cached_rounds": cached}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
