"""Time to first token as a conversation grows: ovchat's chat session vs the sample's path and llama.cpp.

The sample (optimum-intel's OVModelForCausalLM + transformers' generate) re-reads the whole history
every turn; ovchat's session keeps the KV cache, so only the new message is read. Both run on the
same exported folder and see the same conversation (ovchat's answers are replayed to the sample's loop).
With --llama-python and --gguf, llama.cpp (llama-cpp-python, which reuses the longest cached prefix)
gets the same conversation as token ids, one prompt per turn, each timed to its first token: it reads
what its cache does not hold, the previous answer (as the conversation writes it) and the new message.
ovchat's session does the same where the tokens the model wrote differ from the answer's text
tokenized again (a random-weight model's answers do).

    .venv/bin/python benchmarks/chat_turns.py [--model smollm2-135m] [--turns 20] [--runs 3]
        [--llama-python PY --gguf FILE.gguf]

Writes benchmarks/results/chat_turns.md and .json. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from compare import reproduce

TOPICS = ["rivers", "volcanoes", "bees", "the moon", "chess", "bread", "glaciers", "owls", "copper", "tea"]
SYSTEM = "You are a helpful assistant. Answer in two or three sentences."
REPORT_TURNS = (1, 5, 10, 20)
# The first few inferences of a process, at new prompt sizes, pay one-off kernel preparation
# (~0.3-0.9 s each here); both sides run these first so turn 1 measures the turn, not the process.
WARM_UP = ("warm up " * 100, "and once more", "Tell me a story about a fox and a dog and a rabbit in a big forest.")


def script(turns: int) -> list[str]:
    return [
        f"Question {i + 1}: tell me one interesting fact about {TOPICS[i % len(TOPICS)]}, "
        f"and say how it relates to the number {i + 7}."
        for i in range(turns)
    ]


def ovchat_run(folder: Path, messages: list[str], max_new_tokens: int) -> tuple[list[float], list[dict]]:
    import ovchat
    from ovchat import SamplingParams
    from ovchat.session import ChatSession

    model = ovchat.load(str(folder))
    for text in WARM_UP:
        model.generate(text, raw=True, max_new_tokens=4)
    session = ChatSession(model, system=SYSTEM, sampling=SamplingParams(max_new_tokens=max_new_tokens))
    ttfts = []
    for text in messages:
        started = time.perf_counter()
        stream = session.send(text)  # fitting the context (templating, counting) is part of the wait
        fitted = time.perf_counter()
        for _ in stream:
            pass
        ttfts.append(fitted - started + session.stats.time_to_first_token)
    return ttfts, session.conversation()


def sample_run(folder: Path, conversation: list[dict], turns: list[int]) -> list[float]:
    """The sample's loop: template the whole history, tokenize, generate (here one token: its TTFT)."""
    from optimum.intel.openvino import OVModelForCausalLM
    from transformers import AutoConfig, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = OVModelForCausalLM.from_pretrained(
        folder,
        device="CPU",
        ov_config={"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", "CACHE_DIR": ""},
        config=AutoConfig.from_pretrained(folder),
    )
    for text in WARM_UP:
        model.generate(**tok(text, return_tensors="pt"), max_new_tokens=4)
    ttfts = []
    for turn in turns:
        history = conversation[: 1 + 2 * (turn - 1) + 1]  # system + earlier turns + this question
        prompt = tok.apply_chat_template(history, tokenize=False, add_generation_prompt=True)
        started = time.perf_counter()
        inputs = tok(prompt, return_tensors="pt", add_special_tokens=False)
        model.generate(**inputs, max_new_tokens=1, do_sample=False)
        ttfts.append(time.perf_counter() - started)
    return ttfts


def turn_ids(folder: Path, conversation: list[dict], turns: int) -> list[list[int]]:
    """Each turn's whole prompt (history up to its question), as the model's own token ids."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    return [
        tok(
            tok.apply_chat_template(conversation[: 1 + 2 * (turn - 1) + 1], tokenize=False, add_generation_prompt=True),
            add_special_tokens=False,
        )["input_ids"]
        for turn in range(1, turns + 1)
    ]


def llama_run(python: str, gguf: Path, rows: list[list[int]], turns: list[int]) -> list[float]:
    with tempfile.NamedTemporaryFile("w", suffix=".json") as spec:
        json.dump({"gguf": str(gguf), "rows": rows, "turns": turns}, spec)
        spec.flush()
        done = subprocess.run([python, __file__, "--llama-worker", spec.name], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"llama.cpp worker failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def llama_worker(spec_path: str) -> None:
    """Runs under llama-cpp-python's interpreter (no ovchat there)."""
    from llama_cpp import Llama

    spec = json.loads(Path(spec_path).read_text())
    rows = spec["rows"]
    llm = Llama(
        model_path=spec["gguf"],
        n_threads=os.cpu_count(),
        n_threads_batch=os.cpu_count(),
        n_ctx=max(len(r) for r in rows) + 64,
        n_batch=512,
        verbose=False,
    )

    def first_token(ids: list[int]) -> None:
        next(iter(llm.generate(ids, temp=0.0, top_k=1, reset=True)))  # reset=True keeps the longest cached prefix

    for text in WARM_UP:
        first_token(llm.tokenize(text.encode(), add_bos=False))
    llm.reset()
    ttfts = []
    for turn, prompt in enumerate(rows, start=1):
        started = time.perf_counter()
        first_token(prompt)  # every turn, so the cache holds the conversation as a chat would
        if turn in spec["turns"]:
            ttfts.append(time.perf_counter() - started)
    print(json.dumps(ttfts))


def main() -> None:
    if sys.argv[1:2] == ["--llama-worker"]:
        return llama_worker(sys.argv[2])
    import ovchat
    from ovchat.bench import machine
    from ovchat.build.export import ensure_exported

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--llama-python", help="a Python with llama-cpp-python: also measure llama.cpp")
    parser.add_argument("--gguf", help="with --llama-python: the GGUF of the same weights")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "chat_turns"))
    args = parser.parse_args()

    folder = ensure_exported(args.model)
    turns = [t for t in REPORT_TURNS if t <= args.turns]
    messages = script(args.turns)
    sides: dict[str, list[list[float]]] = {"ovchat": [], "sample": []}
    if args.llama_python:
        sides["llama.cpp"] = []
    for run in range(args.runs):
        # A fresh load each run: the pipeline's prefix cache must not carry over between runs.
        ttfts, conversation = ovchat_run(folder, messages, args.max_new_tokens)
        sides["ovchat"].append([ttfts[t - 1] for t in turns])
        sides["sample"].append(sample_run(folder, conversation, turns))
        if args.llama_python:
            rows = turn_ids(folder, conversation, args.turns)
            sides["llama.cpp"].append(llama_run(args.llama_python, Path(args.gguf), rows, turns))
        shown = ", ".join(f"{name} {[round(x * 1000) for x in got[-1]]} ms" for name, got in sides.items())
        print(f"run {run + 1}/{args.runs}: {shown}", flush=True)
    model = ovchat.load(str(folder))
    prompt_tokens = [
        model.count_tokens(model.render(conversation[: 1 + 2 * (t - 1) + 1]), add_special_tokens=False) for t in turns
    ]

    med = lambda side, i: statistics.median(r[i] for r in sides[side]) * 1000  # noqa: E731
    about = machine()
    others = [name for name in sides if name != "ovchat"]
    label = {"sample": "sample, OVModelForCausalLM", "llama.cpp": "llama.cpp, prefix cache"}
    lines = [
        f"# Time to first token by turn ({Path(args.model).name}, {args.max_new_tokens}-token answers, "
        f"median of {args.runs})",
        "",
        f"Machine: {about['cpu']}, {len(os.sched_getaffinity(0))} cores ({', '.join(about['isa'])}). "
        f"Command: `{reproduce('chat_turns.py')}`",
        "",
        "| turn | prompt tokens | ovchat (ms) | "
        + " | ".join(f"{label[n]} (ms) | {n} / ovchat" for n in others)
        + " | ovchat vs turn 1 |",
        "|---:|---:|---:|" + "---:|---:|" * len(others) + "---:|",
    ]
    for i, t in enumerate(turns):
        o = med("ovchat", i)
        cells = " | ".join(f"{med(n, i):.0f} | {med(n, i) / o:.1f}×" for n in others)
        lines.append(f"| {t} | {prompt_tokens[i]} | {o:.0f} | {cells} | {o / med('ovchat', 0):.2f}× |")
    report = "\n".join(lines) + "\n"
    print(report)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(report)
    raw = {
        "model": args.model,
        "machine": about,
        "turns": turns,
        "prompt_tokens": prompt_tokens,
        **{f"{name}_s": got for name, got in sides.items()},
    }
    out.with_suffix(".json").write_text(json.dumps(raw, indent=2) + "\n")


if __name__ == "__main__":
    main()
