"""Embeddings per second: ovchat's (OpenVINO GenAI's TextEmbeddingPipeline on ovchat's fp16 export of
all-MiniLM-L6-v2) against sentence-transformers (PyTorch, the same model from the same wheel) on the same
CPU, for batches of 1, 8 and 64 short texts, side by side in one run, in turn, medians over rounds.
Also the largest cosine distance between the two engines' vectors.

    .venv/bin/python benchmarks/embeddings.py --tag epyc_avx2 [--rounds 7]

Writes benchmarks/results/embeddings_<tag>.md and .json. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from ovchat import load_embedder
from ovchat.bench import machine
from ovchat.eval.answers import embedding_model_dir

BATCHES = (1, 8, 64)
SUBJECTS = ["the weather", "a train timetable", "a recipe for soup", "the stock market", "a football match",
            "a new phone", "a museum visit", "a job interview"]


def texts(count: int, round_: int) -> list[str]:
    """Short texts (10-16 tokens), different each round so no cache answers."""
    return [f"Note {round_}.{i}: a short sentence about {SUBJECTS[i % len(SUBJECTS)]} and nothing more."
            for i in range(count)]


def rate(embed, batch: int, round_: int) -> float:
    started = time.perf_counter()
    embed(texts(batch, round_))
    return batch / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tag", required=True, help="names the results file: the CPU, e.g. epyc_avx2 or xeon")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    import torch
    from sentence_transformers import SentenceTransformer

    ours = load_embedder("all-minilm-l6-v2")
    theirs = SentenceTransformer(str(embedding_model_dir()), device="cpu")
    engines = {
        "ovchat (OpenVINO GenAI, fp16 export)": ours.embed,
        f"sentence-transformers (PyTorch {torch.__version__}, f32)": lambda t: theirs.encode(t, batch_size=64),
    }
    for embed in engines.values():  # warm-up: compile, first allocations
        embed(texts(64, -1))
    rates = {(name, b): [] for name in engines for b in BATCHES}
    for round_ in range(args.rounds):
        for batch in BATCHES:
            for name, embed in engines.items():  # in turn: the machine's drift hits both alike
                rates[(name, batch)].append(rate(embed, batch, round_))
    sample = texts(64, 99)
    a, b = ours.embed(sample), theirs.encode(sample)
    cosine = float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())

    about = machine()
    torch_threads = torch.get_num_threads()
    lines = [f"# Embeddings per second: {about['cpu']}, {about['cores']} cores ({', '.join(about['isa'])})", "",
             f"`python benchmarks/embeddings.py --tag {args.tag} --rounds {args.rounds}`; all-MiniLM-L6-v2, "
             f"short texts, medians of {args.rounds} rounds, OpenVINO {about['openvino']}, "
             f"PyTorch threads {torch_threads}.", "",
             "| batch | " + " | ".join(engines) + " | ratio |", "|---:|" + "---:|" * (len(engines) + 1)]
    rows = []
    names = list(engines)
    for batch in BATCHES:
        medians = [statistics.median(rates[(name, batch)]) for name in names]
        rows.append({"batch": batch, **dict(zip(names, medians, strict=True))})
        lines.append(f"| {batch} | " + " | ".join(f"{m:.0f}" for m in medians) + f" | {medians[0] / medians[1]:.2f}× |")
    lines += ["", f"Lowest cosine between the two engines' vectors over 64 texts: {cosine:.6f}."]
    out = Path(__file__).parent / "results" / f"embeddings_{args.tag}"
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"machine": about, "rows": rows, "min_cosine": cosine}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
