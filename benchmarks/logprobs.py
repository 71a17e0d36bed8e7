"""What log-probabilities cost, and how close the two sources are.

The server's engine (OpenVINO GenAI's continuous batching plus ovchat's second pass for alternatives),
run in this process, answers the same greedy prompts without log-probs, with `logprobs` (GenAI's own,
for the chosen token) and with `top_logprobs` 5 and 20 (the second pass), one request at a time,
in turn. Reported: decode tok/s after the first token and time to the first token (medians), and the
largest difference between GenAI's log-prob of a token and the second pass's, for each of the
server's precisions (the default "speed" one and the batch-invariant one).

    .venv/bin/python benchmarks/logprobs.py --tag epyc_avx2 [--model smollm2-135m] [--rounds 5]

Writes benchmarks/results/logprobs_<tag>.md and .json. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from ovchat import runtime
from ovchat.bench import machine
from ovchat.loader import prepare
from ovchat.precision import choose
from ovchat.sampling import SamplingParams
from ovchat.server import engine_process
from ovchat.server.scorer import ScoreModel

PROMPTS = ["Write a short story about a lighthouse keeper.", "Explain how a bicycle gear works.",
           "List five facts about the Moon.", "Describe a walk through a forest in autumn."]
MODES = {"none": (False, 0), "logprobs": (True, 0), "top_logprobs 5": (True, 5), "top_logprobs 20": (True, 20)}


def engine_for(path: Path, purpose: str):
    chosen = choose("CPU", purpose=purpose)
    properties = runtime.runtime_properties(None, None, chosen)
    pipe = engine_process._pipeline(str(path), "CPU", properties, {"cache_size": 1, "max_num_seqs": 4})
    engine_process._warm_up(pipe)
    return engine_process._Engine(pipe, None, [], ScoreModel(str(path), "CPU", properties)), chosen


def answer(engine, rid: int, ids: list[int], sampling: SamplingParams) -> dict:
    start, first, tokens, values = time.perf_counter(), None, [], []
    assert engine.add(rid, ids, sampling) is None
    while engine.requests:
        for _, new, _, logprobs in engine.step():
            if new and first is None:
                first = time.perf_counter()
            tokens += new
            values += logprobs or []
    end = time.perf_counter()
    rate = (len(tokens) - 1) / (end - first) if first and len(tokens) > 1 else None
    return {"tokens": tokens, "values": values, "ttft_ms": (first - start) * 1e3 if first else None, "tok_s": rate}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--rounds", type=int, default=5, help="times each prompt is answered in each mode")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--tag", required=True, help="names the results file: the CPU, e.g. epyc_avx2 or xeon")
    args = parser.parse_args()
    path, _ = prepare(args.model, "CPU")
    tokenizer = __import__("openvino_genai").Tokenizer(str(path))
    prompts = [runtime.encode(tokenizer, runtime.render(tokenizer, args.model, [{"role": "user", "content": p}]),
                              add_special_tokens=False) for p in PROMPTS]
    rows, agreement, rid = {}, {}, 0
    for purpose in ("speed", "batch-invariant"):
        engine, chosen = engine_for(path, purpose)
        runs: dict[str, list[dict]] = {mode: [] for mode in MODES}
        for _ in range(args.rounds):
            for ids in prompts:
                for mode, (logprobs, top) in MODES.items():  # in turn: the machine's drift hits every mode alike
                    rid += 1
                    sampling = SamplingParams(max_new_tokens=args.max_new_tokens, logprobs=logprobs, top_logprobs=top)
                    runs[mode].append(answer(engine, rid, ids, sampling))
        gaps = [abs(a - b[0]) for plain, top in zip(runs["logprobs"], runs["top_logprobs 5"], strict=True)
                if plain["tokens"] == top["tokens"] for a, b in zip(plain["values"], top["values"], strict=True)]
        agreement[purpose] = {"precision": str(chosen), "tokens": len(gaps), "max_abs_diff": max(gaps),
                              "median_abs_diff": statistics.median(gaps)}
        rows[purpose] = {mode: {"tok_s": statistics.median(r["tok_s"] for r in found if r["tok_s"]),
                                "ttft_ms": statistics.median(r["ttft_ms"] for r in found if r["ttft_ms"])}
                         for mode, found in runs.items()}
        print(purpose, rows[purpose], agreement[purpose], flush=True)
        del engine
    about = machine()
    lines = [
        f"# Log-probabilities: cost and agreement ({args.model})",
        "",
        f"{about['cpu']} ({', '.join(about['isa'])}), {about['cores']} cores, OpenVINO {about['openvino']}. "
        f"`.venv/bin/python benchmarks/logprobs.py --model {args.model} --rounds {args.rounds} --tag {args.tag}`; "
        f"greedy, {len(PROMPTS)} prompts × {args.rounds} rounds per mode, up to {args.max_new_tokens} new tokens, "
        "one request at a time.",
        "",
        "| server precision | mode | decode tok/s (median) | vs none | first token ms (median) |",
        "|---|---|---:|---:|---:|",
    ]
    for purpose, modes in rows.items():
        base = modes["none"]["tok_s"]
        for mode, row in modes.items():
            lines.append(f"| {agreement[purpose]['precision']} | {mode} | {row['tok_s']:.1f} | "
                         f"{row['tok_s'] / base:.2f}× | {row['ttft_ms']:.0f} |")
    lines += ["", "| server precision | tokens compared | GenAI vs second pass, max abs diff | median |",
              "|---|---:|---:|---:|"]
    for found in agreement.values():
        lines.append(f"| {found['precision']} | {found['tokens']} | {found['max_abs_diff']:.2g} | "
                     f"{found['median_abs_diff']:.2g} |")
    out = Path(__file__).parent / "results" / f"logprobs_{args.tag}"
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"machine": about, "rows": rows, "agreement": agreement},
                                                   indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
