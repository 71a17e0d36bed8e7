"""Time to first token as a conversation grows: ovchat's chat session vs the sample's path.

The sample (optimum-intel's OVModelForCausalLM + transformers' generate) re-reads the whole history
every turn; ovchat's session keeps the KV cache, so only the new message is read. Both run on the
same exported folder and see the same conversation (ovchat's answers are replayed to the sample's loop).

    .venv/bin/python benchmarks/chat_turns.py [--model smollm2-135m] [--turns 20] [--runs 3]

Writes benchmarks/results/chat_turns.md and .json. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import ovchat
from ovchat import SamplingParams
from ovchat.build.export import ensure_exported
from ovchat.session import ChatSession

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "chat_turns"))
    args = parser.parse_args()

    folder = ensure_exported(args.model)
    turns = [t for t in REPORT_TURNS if t <= args.turns]
    messages = script(args.turns)
    ours, sample, prompt_tokens = [], [], []
    for run in range(args.runs):
        # A fresh load each run: the pipeline's prefix cache must not carry over between runs.
        ttfts, conversation = ovchat_run(folder, messages, args.max_new_tokens)
        ours.append([ttfts[t - 1] for t in turns])
        sample.append(sample_run(folder, conversation, turns))
        print(
            f"run {run + 1}/{args.runs}: ovchat {[round(x * 1000) for x in ours[-1]]} ms, "
            f"sample {[round(x * 1000) for x in sample[-1]]} ms",
            flush=True,
        )
    model = ovchat.load(str(folder))
    for t in turns:
        history = conversation[: 1 + 2 * (t - 1) + 1]
        prompt_tokens.append(model.count_tokens(model.render(history), add_special_tokens=False))

    med = lambda rows, i: statistics.median(r[i] for r in rows)  # noqa: E731
    lines = [
        f"# Time to first token by turn ({args.model}, {args.max_new_tokens}-token answers, median of {args.runs})",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {len(__import__('os').sched_getaffinity(0))} cores. "
        f"Command: `.venv/bin/python benchmarks/chat_turns.py --model {args.model} --turns {args.turns} "
        f"--runs {args.runs}`",
        "",
        "| turn | prompt tokens | ovchat (ms) | sample, OVModelForCausalLM (ms) | sample / ovchat | ovchat vs turn 1 |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for i, t in enumerate(turns):
        o, s = med(ours, i) * 1000, med(sample, i) * 1000
        lines.append(
            f"| {t} | {prompt_tokens[i]} | {o:.0f} | {s:.0f} | {s / o:.1f}× | {o / (med(ours, 0) * 1000):.2f}× |"
        )
    report = "\n".join(lines) + "\n"
    print(report)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(report)
    raw = {"model": args.model, "turns": turns, "prompt_tokens": prompt_tokens, "ovchat_s": ours, "sample_s": sample}
    out.with_suffix(".json").write_text(json.dumps(raw, indent=2) + "\n")


if __name__ == "__main__":
    main()
