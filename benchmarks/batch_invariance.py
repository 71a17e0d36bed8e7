"""Does an answer change with the batch? `ovchat serve` per precision: 8 prompts alone, then all at once.

    .venv/bin/python benchmarks/batch_invariance.py                       # the server's default
    .venv/bin/python benchmarks/batch_invariance.py -- "" "--precision bf16" "--no-batch-invariant"

Each argument after `--` is one server's extra `ovchat serve` options ("": the defaults); each
server answers the same 8 chat prompts greedily (32 tokens), one at a time and then all 8 streamed
together, and the script counts the prompts whose answer (text and token count) came out the same.
Prints a markdown table, with the first differing answer of each row, and the machine.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import EIGHT_PROMPTS, Server, answers_alone_and_together  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="*", default=[""], help="extra `ovchat serve` options, one string each")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()

    from ovchat import bench

    machine = bench.machine()
    print(f"{machine['cpu']}, {machine['cores']} cores ({' '.join(machine['isa'])}), OpenVINO {machine['openvino']}. "
          f"`python benchmarks/batch_invariance.py {' '.join(repr(a) for a in sys.argv[1:])}`\n")
    print("| serve options | precision | same answer alone and in a batch of 8 | first difference |")
    print("|---|---|---|---|")
    for variant in args.variants:
        with tempfile.TemporaryDirectory() as tmp:
            server = Server(args.model, *variant.split(), log_path=Path(tmp) / "serve.log")
            try:
                stated = re.search(r" on \S+ \((.*?)\), context", server.log())  # the startup line names it
                ran = stated.group(1) if stated else "(not stated: see the server's first line)"
                solo, together = answers_alone_and_together(server, EIGHT_PROMPTS, args.max_tokens)
            finally:
                server.stop()
        same = [p for p in EIGHT_PROMPTS if solo[p] == together[p]]
        differ = next((p for p in EIGHT_PROMPTS if solo[p] != together[p]), None)
        shown = f"{solo[differ][0]!r} / {together[differ][0]!r}" if differ else ""
        print(f"| `{variant or '(defaults)'}` | {ran} | {len(same)}/{len(EIGHT_PROMPTS)} | {shown} |", flush=True)


if __name__ == "__main__":
    main()
