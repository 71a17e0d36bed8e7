"""Load on an OpenAI-compatible server: time to first token, inter-token latency, throughput.

Streams chat completions from N concurrent clients (N = 1, 2, 4, 8, 16 by default), each sending
requests back to back, and reports per level: TTFT and inter-token latency p50/p95, requests/s,
aggregate output tok/s, failures. It starts `ovchat serve` itself, and llama.cpp's server
(llama-cpp-python[server]) on the same GGUF when given a Python that has it.

    .venv/bin/python benchmarks/serve_load.py [--model smollm2-135m] [--levels 1,2,4,8,16]
        [--llama-python /path/to/venv/bin/python] [--url http://host:port  (an already running server)]

Writes benchmarks/results/serve_load.md and .json. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from compare import reproduce

TOPICS = ["a dragon", "the sea", "a lighthouse keeper", "a lost robot", "a mountain village", "a clockmaker",
          "a desert caravan", "an old library", "a winter forest", "a space station", "a river town", "a chess game",
          "a baker", "a comet", "a fox and a crow", "a train journey"]
PROMPTS = [f"Write a long story about {t}." for t in TOPICS]


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def one_request(client: httpx.AsyncClient, url: str, model: str, prompt: str, max_tokens: int) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0, "repetition_penalty": 1.0, "stream": True, "stream_options": {"include_usage": True}}
    started = time.perf_counter()
    stamps: list[float] = []
    usage = None
    try:
        async with client.stream("POST", url + "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                await response.aread()
                return {"ok": False, "status": response.status_code}
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    return {"ok": False, "status": "in-stream error"}
                usage = chunk.get("usage") or usage
                choices = chunk.get("choices") or []
                if choices and (choices[0].get("delta") or {}).get("content"):
                    stamps.append(time.perf_counter())
    except httpx.HTTPError as exc:
        return {"ok": False, "status": type(exc).__name__}
    if not stamps:
        return {"ok": False, "status": "no tokens"}
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]  # noqa: B905
    # Tokens: the server's own count when it reports usage, else one per content chunk.
    tokens = usage["completion_tokens"] if usage else len(stamps)
    return {"ok": True, "ttft": stamps[0] - started, "gaps": gaps, "tokens": tokens, "end": stamps[-1]}


async def level(url: str, model: str, concurrency: int, requests: int, max_tokens: int) -> dict:
    """One burst: `concurrency` clients share `requests` requests. Raw results and the wall time."""
    todo = list(range(requests))
    results: list[dict] = []

    async def client_loop(client: httpx.AsyncClient) -> None:
        while todo:
            i = todo.pop()
            results.append(await one_request(client, url, model, PROMPTS[i % len(PROMPTS)], max_tokens))

    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
        wall = time.perf_counter() - started
    ok = [r for r in results if r["ok"]]
    return {"results": results, "wall": wall, "tok_per_s": sum(r["tokens"] for r in ok) / wall,
            "req_per_s": len(ok) / wall}


def summarize(name: str, concurrency: int, bursts: list[dict]) -> dict:
    """Pooled latency percentiles; throughput as the median over rounds (machines here are noisy)."""
    results = [r for b in bursts for r in b["results"]]
    ok = [r for r in results if r["ok"]]
    gaps = [g for r in ok for g in r["gaps"]]
    return {
        "server": name, "concurrency": concurrency, "rounds": len(bursts), "requests": len(results),
        "failures": len(results) - len(ok),
        "failure_kinds": sorted({str(r["status"]) for r in results if not r["ok"]}),
        "ttft_p50": pct([r["ttft"] for r in ok], 0.5), "ttft_p95": pct([r["ttft"] for r in ok], 0.95),
        "itl_p50": pct(gaps, 0.5), "itl_p95": pct(gaps, 0.95),
        "requests_per_s": statistics.median(b["req_per_s"] for b in bursts),
        "output_tok_per_s": statistics.median(b["tok_per_s"] for b in bursts),
        "tok_per_s_rounds": [round(b["tok_per_s"], 1) for b in bursts],
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, path: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url + path, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise SystemExit("server did not become ready")


def start_ovchat(model: str, extra: list[str], log) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "ovchat.cli", "serve", "--model", model, "--port", str(port),
                             "--max-concurrency", "16", *extra], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, proc, "/health")
    return proc, url


def start_llama(python: str, gguf: Path, log) -> tuple[subprocess.Popen, str]:
    port = free_port()
    threads = str(os.cpu_count() or 2)
    proc = subprocess.Popen([python, "-m", "llama_cpp.server", "--model", str(gguf), "--port", str(port),
                             "--n_threads", threads, "--n_ctx", "4096", "--verbose", "False",
                             "--interrupt_requests", "False"],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, proc, "/v1/models")
    return proc, url


def run_all(name: str, url: str, model: str, levels: list[int], max_tokens: int, per_level: int,
            rounds: int) -> list[dict]:
    asyncio.run(level(url, model, 1, 2, 8))  # warm up: first inferences of a process are slower
    bursts: dict[int, list[dict]] = {c: [] for c in levels}
    for _ in range(rounds):  # levels interleaved, so drift on a shared machine hits them all alike
        for c in levels:
            bursts[c].append(asyncio.run(level(url, model, c, max(per_level, 2 * c), max_tokens)))
    rows = [summarize(name, c, bursts[c]) for c in levels]
    for row in rows:
        print(f"{name:>10} c={row['concurrency']:<3} n={row['requests']:<3} fail={row['failures']} "
              f"ttft p50 {ms(row['ttft_p50'])} ms p95 {ms(row['ttft_p95'])} ms  "
              f"itl p50 {ms(row['itl_p50'], 1)} ms p95 {ms(row['itl_p95'], 1)} ms  "
              f"{row['requests_per_s']:.2f} req/s  {row['output_tok_per_s']:.1f} tok/s {row['tok_per_s_rounds']}",
              flush=True)
    return rows


def ms(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value * 1000:.{digits}f}"


def report(rows: list[dict], args, out: Path) -> None:
    from ovchat.bench import machine as describe_machine

    machine = describe_machine()
    lines = [
        "# Server load: ovchat serve vs llama.cpp's server",
        "",
        f"Command: `{reproduce('serve_load.py')}`  ",
        f"Machine: {machine['cpu']} ({' '.join(machine['isa'])}), {os.cpu_count()} cores, "
        f"Python {platform.python_version()}; "
        f"model {Path(args.model).name}, greedy, up to {args.max_tokens} new tokens per request, streamed; "
        f"{args.rounds} rounds over the levels, interleaved: latencies pooled, throughput the median round.",
        "",
        "| server | clients | requests | failures | TTFT p50 ms | TTFT p95 ms | ITL p50 ms | ITL p95 ms "
        "| req/s | output tok/s | tok/s by round |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(f"| {r['server']} | {r['concurrency']} | {r['requests']} | {r['failures']} | {ms(r['ttft_p50'])} "
                     f"| {ms(r['ttft_p95'])} | {ms(r['itl_p50'], 1)} | {ms(r['itl_p95'], 1)} "
                     f"| {r['requests_per_s']:.2f} | {r['output_tok_per_s']:.1f} | {r['tok_per_s_rounds']} |")
    for server in sorted({r["server"] for r in rows}):
        mine = {r["concurrency"]: r for r in rows if r["server"] == server}
        if 1 in mine and 8 in mine:
            ratio = mine[8]["output_tok_per_s"] / mine[1]["output_tok_per_s"]
            lines.append(f"\n{server}: output tok/s at 8 clients = {ratio:.2f}× 1 client.")
    lines.append("\nTokens are the servers' usage counts (else one per streamed chunk); ITL is the gap between "
                 "content chunks. "
                 "llama-cpp-python's server runs one request at a time (no continuous batching; queued, "
                 "not interrupted); "
                 "ovchat serve batches up to 16 here.")
    for variant in args.ovchat or []:
        name, _, extra = variant.partition("=")
        lines.append(f"{name}: `ovchat serve {extra}`.")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--levels", default="1,2,4,8,16")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--per-level", type=int, default=4, help="Requests per level and round (at least 2/client).")
    parser.add_argument("--rounds", type=int, default=3, help="Rounds over all levels; throughput is their median.")
    parser.add_argument("--url", help="Measure an already running server instead of starting ovchat serve.")
    parser.add_argument("--llama-python", help="A Python with llama-cpp-python[server]: measure it on the same GGUF.")
    parser.add_argument("--gguf", help="With --llama-python: the GGUF llama.cpp serves, when --model is not one "
                        "(e.g. an exported folder and the GGUF of the same weights).")
    parser.add_argument("--ovchat", action="append", metavar="NAME=ARGS",
                        help="An ovchat serve variant to measure, by name and extra serve arguments "
                        "(repeatable; e.g. 'fast=--no-batch-invariant'); default: 'ovchat=' (its defaults).")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "serve_load"))
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    rows: list[dict] = []
    with tempfile.TemporaryFile("w+") as log:
        if args.url:
            url = args.url.rstrip("/")
            rows += run_all("server", url, args.model, levels, args.max_tokens, args.per_level, args.rounds)
        for variant in [] if args.url else args.ovchat or ["ovchat="]:
            name, _, extra = variant.partition("=")
            proc, url = start_ovchat(args.model, extra.split(), log)
            try:
                served = httpx.get(url + "/v1/models").json()["data"][0]["id"]
                rows += run_all(name, url, served, levels, args.max_tokens, args.per_level, args.rounds)
            finally:
                proc.terminate()
                proc.wait()
        if args.llama_python:
            from ovchat import catalog

            gguf = Path(args.gguf) if args.gguf else catalog.materialize(catalog.resolve(args.model))
            if not re.search(r"\.gguf$", str(gguf)):
                raise SystemExit(f"{gguf} is not a GGUF file; llama.cpp needs one (--gguf FILE)")
            proc, url = start_llama(args.llama_python, gguf, log)
            try:
                rows += run_all("llama.cpp", url, args.model, levels, args.max_tokens, args.per_level, args.rounds)
            finally:
                proc.terminate()
                proc.wait()
    report(rows, args, Path(args.out))


if __name__ == "__main__":
    main()
