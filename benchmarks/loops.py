"""Repetition loops: how often answers fall into one, how long they are, and what the loop guard does.

    .venv/bin/python benchmarks/loops.py [--model smollm2-135m] [--configs greedy,card,ollama,t0.5,t0.3] [--tag TAG]
    .venv/bin/python benchmarks/loops.py --similarity 256   # generate: answer similarity, guard off and on

Prompts: the 58 shipped chat prompts, 20 everyday questions of our own, and 6 that ask for a
repetitive answer (which the guard must let through). Every answer is generated once per sampling
configuration with the guard off and up to 1024 new tokens; the guard is then replayed on its
tokens, so one run scores every threshold. An answer "loops" when it reaches the token limit (no
answer to these prompts needs 1024 tokens; every one that reached it was read and was a loop).
Writes results/loops_<model>.{md,json} (the json keeps every answer).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
LIMIT = 1024

EVERYDAY = [
    "What should I pack for a weekend hiking trip?",
    "Write a thank-you note to a teacher.",
    "How can I get better at waking up early?",
    "Give me ideas for a birthday party for a ten-year-old.",
    "What are some healthy snacks I can take to work?",
    "How do I start learning to play the guitar?",
    "Write a short message to a neighbour asking them to water my plants.",
    "What are good questions to ask at the end of a job interview?",
    "How can I save money on groceries?",
    "Plan a simple three-day trip to Rome.",
    "What can I cook with eggs, spinach and cheese?",
    "How do I politely decline an invitation to a wedding?",
    "Give me a weekly exercise plan for a beginner.",
    "What are the benefits of reading before bed?",
    "Write a short speech for my sister's graduation.",
    "How do I keep houseplants alive?",
    "What should I consider when buying a used car?",
    "Suggest some hobbies I can do at home in winter.",
    "How do I make my small apartment feel bigger?",
    "Explain how to change a flat tire on a bicycle.",
]
# Answers that should repeat: (prompt, piece, n): a cut is too early while the answer so far holds
# fewer than n of that piece (a model that keeps going past what was asked may be cut after it).
ASKED = [
    ("Write the word 'yes' 30 times, separated by spaces.", "yes", 30),
    ("Count from 1 to 40, one number per line.", "40", 1),
    ("Repeat the sentence 'I love learning new things.' five times.", "learning new things", 5),
    ("Write a short song with the chorus 'Sing it loud, sing it proud' after each verse.", "Sing it loud", 2),
    ("List the days of the week, then list them again in reverse order.", "Sunday", 2),
    ("Write 'Hello' ten times, each on its own line.", "Hello", 10),
]
CONFIGS = {
    "greedy": {},  # `ovchat generate`'s contract
    "card": {"temperature": 0.2, "top_p": 0.9},  # SmolLM2-Instruct's model card
    "ollama": {"temperature": 0.8, "top_p": 0.9, "top_k": 40, "repetition_penalty": 1.1},  # Ollama's defaults
    # Cooler than Ollama's: a 135M model rambles at 0.8 (its answers that reach the limit drift off topic).
    "t0.5": {"temperature": 0.5, "top_p": 0.9, "top_k": 40, "repetition_penalty": 1.1},
    "t0.3": {"temperature": 0.3, "top_p": 0.9, "top_k": 40, "repetition_penalty": 1.15},
}
# Guard thresholds replayed on every answer: (repeats, min_tokens, match).
GRID = [(r, m, f) for r in (3, 4) for m in (64, 96, 128, 192) for f in (0.75, 0.8, 0.85, 0.9, 1.0)]


def prompts() -> list[dict]:
    from ovchat.eval.answers import load_prompts
    from ovchat.eval.scoring import DEFAULT_PROMPTS

    items = [{"prompt": p["prompt"], "set": "shipped"} for p in load_prompts(DEFAULT_PROMPTS)]
    items += [{"prompt": p, "set": "everyday"} for p in EVERYDAY]
    items += [{"prompt": p, "set": "asked"} for p, _, _ in ASKED]
    return items


def collect(model_spec: str, configs: list[str], seed: int) -> list[dict]:
    import ovchat

    model = ovchat.load(model_spec)
    rows = []
    for config in configs:
        for n, item in enumerate(prompts()):
            started = time.perf_counter()
            text, last = "", None
            params = {**CONFIGS[config], "max_new_tokens": LIMIT, "loop_guard": False}
            if CONFIGS[config]:
                params["seed"] = seed + n
            for last in model.stream_generate(item["prompt"], **params):
                text += last.text
            rows.append({**item, "config": config, "answer": text, "tokens": last.token_count,
                         "finish": last.finish_reason, "seconds": round(time.perf_counter() - started, 2)})
            print(f"{config:7s} {n:3d} {last.token_count:5d} tokens  {item['prompt'][:60]}", file=sys.stderr)
    return rows


def trip(ids: list[int], repeats: int, min_tokens: int, match: float) -> int | None:
    """Where the guard would end this answer (a token index), or None."""
    from ovchat.sampling import LoopGuard

    guard = LoopGuard(repeats=repeats, min_tokens=min_tokens, match=match)
    return next((i for i, token in enumerate(ids) if guard.push([token])), None)


def _early(row: dict, cut: int | None, decode) -> bool:
    """An asked-for repetition cut before it held what was asked (the whole answer did not either: no)."""
    if cut is None:
        return False
    piece, n = next((piece, n) for prompt, piece, n in ASKED if prompt == row["prompt"])
    return decode(row["ids"][: cut + 1]).count(piece) < min(n, row["answer"].count(piece))


def relevance(rows: list[dict]) -> None:
    """Each answer's cosine similarity to its prompt (all-MiniLM-L6-v2, as `ovchat eval`; it reads an
    answer's first 256 tokens): an answer that drifts off the question scores lower."""
    from ovchat.eval.answers import Embedder, similarities

    sims = similarities(Embedder(), [r["prompt"] for r in rows], [r["answer"] for r in rows])
    for row, sim in zip(rows, sims, strict=True):
        row["relevance"] = round(float(sim), 4)


def score(rows: list[dict], decode) -> dict:
    """Per config and per guard setting: loops, guard catches, false cuts, answer lengths."""
    from ovchat.eval.metrics import mean_se

    out: dict = {}
    for config in dict.fromkeys(r["config"] for r in rows):
        mine = [r for r in rows if r["config"] == config]
        chat = [r for r in mine if r["set"] != "asked"]
        loops = [r for r in chat if r["tokens"] >= LIMIT]
        settings = {}
        for repeats, min_tokens, match in GRID:
            cuts = {id(r): trip(r["ids"], repeats, min_tokens, match) for r in mine}
            after = [cuts[id(r)] + 1 if cuts[id(r)] is not None else r["tokens"] for r in chat]
            cut_asked = [r["prompt"] for r in mine if r["set"] == "asked" and _early(r, cuts[id(r)], decode)]
            cut_fine = [r["prompt"] for r in chat if r["tokens"] < LIMIT and cuts[id(r)] is not None]
            settings[f"r{repeats}-m{min_tokens}-f{match:g}"] = {
                "loops_caught": sum(cuts[id(r)] is not None for r in loops),
                "loops_left_at_limit": sum(cuts[id(r)] is None for r in loops),
                "cut_tokens_median": statistics.median([cuts[id(r)] + 1 for r in loops if cuts[id(r)] is not None]
                                                       or [0]),
                "finished_answers_cut": cut_fine,
                "asked_repetition_cut": cut_asked,
                "median_tokens": statistics.median(after),
            }
        out[config] = {
            "answers": len(chat),
            "loops": len(loops),
            "loop_share": round(len(loops) / len(chat), 3),
            "median_tokens": statistics.median(r["tokens"] for r in chat),
            "relevance": mean_se([r["relevance"] for r in chat]),
            "seconds": round(sum(r["seconds"] for r in mine), 1),
            "guard": settings,
        }
    return out


def guard_cost(rows: list[dict]) -> dict:
    """The guard's own time per token (the default setting, guard kept running to the end of each
    answer), beside the decode time per token of the same answers."""
    from ovchat.sampling import LoopGuard

    tokens = sum(len(r["ids"]) for r in rows)
    started = time.perf_counter()
    for row in rows:
        guard = LoopGuard()
        for token in row["ids"]:
            guard.push([token])
    guard_us = (time.perf_counter() - started) / tokens * 1e6
    decode_us = statistics.median(r["seconds"] / r["tokens"] * 1e6 for r in rows if r["tokens"] > 32)
    return {"guard_us_per_token": round(guard_us, 1), "decode_us_per_token": round(decode_us, 1),
            "share": round(guard_us / decode_us, 4)}


def table(model: str, scores: dict, chosen: str) -> str:
    lines = [
        f"# Repetition loops: {model}",
        "",
        f"`python benchmarks/loops.py --model {model}`; {LIMIT} new tokens at most, the guard replayed on every",
        "answer's tokens. An answer loops when it reaches the limit. Relevance: the answer's cosine similarity",
        "to its prompt (all-MiniLM-L6-v2 over the answer's first 256 tokens), mean ± standard error.",
        "",
        f"| sampling | answers | loop (share) | median tokens | relevance ± se | with the guard ({chosen}): loops "
        "left at the limit | median tokens | finished answers cut | asked-for repetition cut too early |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    cost, configs = scores["cost"], {k: v for k, v in scores.items() if k != "cost"}
    for config, s in configs.items():
        g = s["guard"][chosen]
        lines.append(
            f"| {config} {CONFIGS[config] or '(greedy)'} | {s['answers']} | {s['loops']} ({s['loop_share']:.0%}) "
            f"| {s['median_tokens']:.0f} | {s['relevance'][0]:.3f} ± {s['relevance'][1]:.3f} "
            f"| {g['loops_left_at_limit']} | {g['median_tokens']:.0f} "
            f"| {len(g['finished_answers_cut'])} | {len(g['asked_repetition_cut'])} |"
        )
    lines += [
        "",
        f"The guard's cost: {cost['guard_us_per_token']} µs a token in Python, against "
        f"{cost['decode_us_per_token']:.0f} µs a token of decoding (median of these answers, the time to first "
        f"token included): {cost['share']:.2%}.",
        "",
        "Every guard setting (repeats, minimum tokens, share matching):",
        "",
    ]
    lines.append(
        "| sampling | setting | loops caught | left | cut at (median tokens) | finished cut | asked cut early |"
    )
    lines.append("|---|---|---|---|---|---|---|")
    for config, s in configs.items():
        for name, g in s["guard"].items():
            lines.append(
                f"| {config} | {name} | {g['loops_caught']} | {g['loops_left_at_limit']} "
                f"| {g['cut_tokens_median']:.0f} | {len(g['finished_answers_cut'])} "
                f"| {len(g['asked_repetition_cut'])} |"
            )
    return "\n".join(lines) + "\n"


def similarity(model_spec: str, new_tokens: int) -> dict:
    """Answer similarity to the float reference, as `ovchat eval` measures it (the 58 shipped prompts,
    greedy, all-MiniLM-L6-v2), for `generate`'s answers without and with the loop guard."""
    import ovchat
    from ovchat.build.export import ensure_exported
    from ovchat.eval.answers import Embedder, load_prompts, openvino_answers, similarities, torch_answers
    from ovchat.eval.logits import open_reference, reference_source
    from ovchat.eval.metrics import mean_se
    from ovchat.eval.scoring import DEFAULT_PROMPTS

    def nothing() -> None:
        pass

    model = ovchat.load(model_spec)  # as `ovchat generate` runs it
    items = load_prompts(DEFAULT_PROMPTS)
    reference = torch_answers(open_reference(reference_source(ensure_exported(model_spec), None)), model, items,
                              new_tokens, nothing)
    plain = openvino_answers(model, items, new_tokens, nothing)
    guarded = openvino_answers(model, items, new_tokens, nothing, loop_guard=True)
    embed = Embedder()
    sims = {name: similarities(embed, answers, reference) for name, answers in (("off", plain), ("on", guarded))}
    return {
        "new_tokens": new_tokens,
        "prompts": len(items),
        "answers_changed": sum(a != b for a, b in zip(plain, guarded, strict=True)),
        "guard_off": mean_se(sims["off"]),
        "guard_on": mean_se(sims["on"]),
        "difference": mean_se(sims["on"] - sims["off"]),  # paired: the same prompts
        "answers": [{"prompt": i["prompt"], "reference": r, "guard_off": a, "guard_on": b}
                    for i, r, a, b in zip(items, reference, plain, guarded, strict=True)],
    }


def similarity_table(model: str, result: dict, args: str) -> str:
    off, on, diff = result["guard_off"], result["guard_on"], result["difference"]
    return "\n".join([
        f"# Answer similarity with and without the loop guard: {model}",
        "",
        f"`python benchmarks/loops.py {args}`: `ovchat generate`'s greedy answers to the {result['prompts']} shipped "
        f"prompts ({result['new_tokens']} new tokens at most), compared with the float reference's (transformers, "
        "float32) as `ovchat eval` does.",
        "",
        "| loop guard | similarity to the reference (mean ± se) |",
        "|---|---|",
        f"| off | {off[0]:.4f} ± {off[1]:.4f} |",
        f"| on | {on[0]:.4f} ± {on[1]:.4f} |",
        "",
        f"Paired difference (on − off): {diff[0]:+.4f} ± {diff[1]:.4f}; answers the guard changed: "
        f"{result['answers_changed']} of {result['prompts']}.",
    ]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rescore", action="store_true", help="Score the saved answers again (no generation).")
    parser.add_argument("--tag", default="", help="Appended to the results' name (the CPU kind, say).")
    parser.add_argument("--similarity", type=int, metavar="NEW_TOKENS",
                        help="Instead: answer similarity to the float reference with and without the guard.")
    args = parser.parse_args()
    from ovchat import bench, catalog
    from ovchat.sampling import LOOP_MATCH, LOOP_MIN_TOKENS, LOOP_REPEATS

    name = catalog.resolve(args.model).name if not Path(args.model).exists() else Path(args.model).name
    out = HERE / "results" / f"loops_{name}{'_' + args.tag if args.tag else ''}"
    if args.similarity:
        result, machine = similarity(args.model, args.similarity), bench.machine()
        out = out.with_name(out.name + "_similarity")
        out.with_suffix(".json").write_text(json.dumps({"model": name, "machine": machine, **result}, indent=1) + "\n")
        flags = " ".join(sys.argv[1:])
        out.with_suffix(".md").write_text(similarity_table(name, result, flags) + f"\nMachine: {machine['cpu']}, "
                                          f"{machine['cores']} cores, OpenVINO {machine['openvino']}.\n")
        print(similarity_table(name, result, flags))
        return
    if args.rescore:
        saved = json.loads(out.with_suffix(".json").read_text())
        rows, machine = saved["answers"], saved["machine"]
    else:
        rows, machine = collect(args.model, args.configs.split(","), args.seed), bench.machine()
    chosen = f"r{LOOP_REPEATS}-m{LOOP_MIN_TOKENS}-f{LOOP_MATCH:g}"
    import openvino_genai as ov_genai

    from ovchat.build.export import ensure_exported

    tokenizer = ov_genai.Tokenizer(str(ensure_exported(args.model)))
    for row in rows:  # the guard reads tokens: the answer's own (kept out of the json)
        row["ids"] = tokenizer.encode(row["answer"], add_special_tokens=False).input_ids.data[0].tolist()
    relevance(rows)
    scores = score(rows, lambda ids: tokenizer.decode(ids, skip_special_tokens=True))
    scores["cost"] = guard_cost(rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    answers = [{k: v for k, v in row.items() if k != "ids"} for row in rows]
    out.with_suffix(".json").write_text(json.dumps({"model": name, "machine": machine, "scores": scores,
                                                    "answers": answers}, indent=1) + "\n")
    out.with_suffix(".md").write_text(table(name, scores, chosen) + f"\nMachine: {machine['cpu']}, "
                                      f"{machine['cores']} cores, OpenVINO {machine['openvino']}.\n")
    print(table(name, scores, chosen))


if __name__ == "__main__":
    main()
