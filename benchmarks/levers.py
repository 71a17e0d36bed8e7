"""Which export recipe and OpenVINO properties make ovchat fastest here: `ovchat bench`, side by side.

    .venv/bin/python benchmarks/levers.py --rounds 4 \\
        --case "seed=$HOME/.ovchat/models/smollm2-135m-int4-sym-g128-r0.6-…" \\
        --case 'sample recipe, no dynamic quantization=…-r0.6-…:{"DYNAMIC_QUANTIZATION_GROUP_SIZE": 0}'

Each case is LABEL=FOLDER[:PROPERTIES-JSON]. Every case runs in a fresh process per round and the
rounds interleave the cases, so a slow spell on a shared machine hits all of them alike; medians
over rounds are printed (decode tok/s pools the prompt lengths).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

CHILD = """
import json, sys
from ovchat import bench
r = bench.run(sys.argv[1], prompt_tokens=json.loads(sys.argv[3]), new_tokens=int(sys.argv[4]), runs=3, warmup=1,
              config=json.loads(sys.argv[2]))
print(json.dumps(r))
"""


def parse_case(text: str) -> tuple[str, str, dict]:
    label, _, rest = text.partition("=")
    folder, _, props = rest.partition(":{")
    return label, folder, json.loads("{" + props) if props else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", action="append", required=True, help="LABEL=FOLDER[:PROPERTIES-JSON]")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--prompt-tokens", default="32,512")
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args()
    cases = [parse_case(c) for c in args.case]
    lengths = [int(n) for n in args.prompt_tokens.split(",")]
    seen = {label: {"decode": [], "rounds": [], "ttft": {n: [] for n in lengths}, "rss": []} for label, _, _ in cases}
    for round_ in range(args.rounds):
        for label, folder, props in cases:
            argv = [sys.executable, "-c", CHILD, folder, json.dumps(props), json.dumps(lengths), str(args.new_tokens)]
            done = subprocess.run(argv, capture_output=True, text=True, check=True)
            report = json.loads(done.stdout.strip().splitlines()[-1])
            for row in report["results"]:
                seen[label]["decode"].append(row["decode_tok_s"]["median"])
                seen[label]["ttft"][row["prompt_tokens"]].append(row["ttft_ms"]["median"])
            seen[label]["rss"].append(report["peak_rss_mb"])
            seen[label]["rounds"].append(statistics.median(r["decode_tok_s"]["median"] for r in report["results"]))
            print(f"round {round_ + 1}: {label}", file=sys.stderr, flush=True)
    # Paired by round: each case's decode over the first case's in the same round, then the median.
    # A slow spell on a shared machine moves both sides of a pair alike.
    first = seen[cases[0][0]]["rounds"]
    print(
        "| case | decode tok/s (min–max) | decode vs first case, paired by round | "
        + " | ".join(f"TTFT {n} ms" for n in lengths)
        + " | peak RSS MB |"
    )
    print("|---|---|---|" + "---|" * len(lengths) + "---|")
    for label, s in seen.items():
        paired = statistics.median(a / b for a, b in zip(s["rounds"], first, strict=True))
        d = s["decode"]
        ttft = " | ".join(f"{statistics.median(s['ttft'][n]):.0f}" for n in lengths)
        rss = statistics.median(s["rss"])
        decode = f"{statistics.median(d):.1f} ({min(d):.0f}–{max(d):.0f})"
        print(f"| {label} | {decode} | {paired:.3f} | {ttft} | {rss:.0f} |")


if __name__ == "__main__":
    main()
