"""Prompt-lookup decoding (`--prompt-lookup`): how much it speeds up answers that quote the prompt,
and what it costs answers that do not, on one model, side by side in one process.

    .venv/bin/python benchmarks/prompt_lookup.py [--model smollm2-135m] [--rounds 4]

Two tasks, greedy, 200 new tokens at most: "repeat this paragraph" (the answer quotes the prompt)
and "write a short story" (it does not). Both pipelines are loaded once; rounds alternate them.
Decode rate = (tokens - 1) / (last token - first token), timed by ovchat's own stream. Writes
results/prompt_lookup.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "prompt_lookup"


def tasks() -> dict[str, str]:
    from ovchat.eval.scoring import DEFAULT_TEXT

    paragraph = " ".join(DEFAULT_TEXT.read_text()[3000:4200].split())
    return {
        "quote (repeat a paragraph)": f"Repeat the following text exactly, word for word:\n\n{paragraph}",
        "free (a short story)": "Write a short story about a robot who learns to paint.",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=200)
    args = parser.parse_args()

    import ovchat
    from ovchat import bench

    models = {False: ovchat.load(args.model), True: ovchat.load(args.model, prompt_lookup=True)}
    samples: dict[tuple[str, bool], list[float]] = {}
    answers: dict[tuple[str, bool], str] = {}
    for _ in range(args.rounds + 1):  # the first round warms both up and is not counted
        for name, prompt in tasks().items():
            for lookup, model in models.items():
                text, last = "", None
                for last in model.stream_generate(prompt, max_new_tokens=args.new_tokens):
                    text += last.text
                answers[(name, lookup)] = text
                samples.setdefault((name, lookup), []).append(last.tokens_per_second)
                print(f"{name:28s} lookup={lookup!s:5s} {last.tokens_per_second:6.1f} tok/s", file=sys.stderr)
    rows = []
    for name in tasks():
        off, on = (statistics.median(samples[(name, k)][1:]) for k in (False, True))
        rows.append(
            {
                "task": name,
                "decode_tok_s": {"off": round(off, 1), "on": round(on, 1)},
                "speedup": round(on / off, 2),
                "same_answer": answers[(name, False)] == answers[(name, True)],
            }
        )
    report = {
        "model": args.model,
        "machine": bench.machine(),
        "date": time.strftime("%Y-%m-%d"),
        "rounds": args.rounds,
        "command": " ".join(["python", "benchmarks/prompt_lookup.py", *sys.argv[1:]]),
        "rows": rows,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.with_suffix(".json").write_text(json.dumps(report, indent=1))
    lines = [
        f"# Prompt-lookup decoding on {args.model}",
        "",
        f"{report['machine']['cpu']}, {report['machine']['cores']} cores, {report['date']}. "
        f"Median of {args.rounds} rounds after a warm-up round, greedy, {args.new_tokens} new tokens at most. "
        f"Command: `{report['command']}`.",
        "",
        "| task | decode tok/s, off | with --prompt-lookup | speed-up | same answer |",
        "|---|---:|---:|---:|---|",
    ]
    for r in rows:
        d = r["decode_tok_s"]
        same = 'yes' if r['same_answer'] else 'NO'
        lines.append(f"| {r['task']} | {d['off']} | {d['on']} | {r['speedup']}× | {same} |")
    OUT.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
