"""Tool calls: how often they validate, and what the grammar costs in decode speed.

For each of --requests prompts (varied tools and schemas: enums, bounded integers, nested objects,
arrays, patterns, free strings), ovchat's library generates with tool_choice `required`, a named tool
and `auto`, sampled (temperature 0.8, seeded). A call counts as valid when its arguments parse and
validate against its tool's schema with `jsonschema`; an answer cut by the token budget counts as
not valid. Decode speed: the same prompts answered with and without the tools (tok/s after the first
token, medians), side by side in one process.

    .venv/bin/python benchmarks/tools.py [--model smollm2-135m] [--requests 50] [--chat-template FILE]

--chat-template puts a template beside (a linked copy of) the model, as chat_template.jinja: a model then
calls in that template's own format (benchmarks/templates/qwen3coder_chatml.jinja: Qwen3-Coder's XML on
SmolLM2's ChatML), and "described" is the same prompt answered with tool_choice "none".

Writes benchmarks/results/tools_<tag>.md and .json. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
from pathlib import Path

import jsonschema

import ovchat
from ovchat.bench import machine

TOOLS = [
    ovchat.Tool("get_weather", "The current weather in a city.", {
        "type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"]}),
    ovchat.Tool("add", "Add two whole numbers.", {
        "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}),
    ovchat.Tool("book_room", "Book a hotel room.", {
        "type": "object", "properties": {
            "room": {"enum": ["single", "double", "suite"]}, "nights": {"type": "integer", "minimum": 1, "maximum": 14},
            "guest": {"type": "object", "properties": {"name": {"type": "string", "maxLength": 40},
                                                       "age": {"type": "integer", "minimum": 18, "maximum": 120}},
                      "required": ["name", "age"]},
            "extras": {"type": "array", "items": {"enum": ["breakfast", "parking", "late checkout"]}, "maxItems": 3}},
        "required": ["room", "nights", "guest"]}),
    ovchat.Tool("find_flight", "Find a flight between two airports.", {
        "type": "object", "properties": {"origin": {"type": "string", "pattern": "^[A-Z]{3}$"},
                                         "destination": {"type": "string", "pattern": "^[A-Z]{3}$"},
                                         "direct": {"type": "boolean"}},
        "required": ["origin", "destination"]}),
]
PROMPTS = [
    "What's the weather like in {city}?", "Add {a} and {b}.", "Book a double room for {n} nights for Ana, 34.",
    "Find me a direct flight from {city} to Rome.", "Is it raining in {city}?", "What is {a} plus {b}?",
    "I need a suite for {n} nights with breakfast, guest Tom Lee aged 51.", "Fly me from {city} to Oslo.",
    "Hi! How are you today?", "Write one sentence about {city}.",
]
CITIES = ["Paris", "Lima", "Cairo", "Tokyo", "Quito", "Perth", "Accra", "Hanoi", "Denver", "Porto"]


def prompt(i: int) -> str:
    return PROMPTS[i % len(PROMPTS)].format(city=CITIES[i % len(CITIES)], a=i * 7, b=i + 3, n=1 + i % 9)


def run(model, i: int, choice: str | None, budget: int, described: bool = False):
    kwargs = {"tools": TOOLS, "tool_choice": choice} if choice else {}
    messages = [{"role": "user", "content": prompt(i)}]
    if described and model.tool_format is not None:  # the template describes the tools: "none" frees the answer
        kwargs = {"tools": TOOLS, "tool_choice": "none"}
    elif described:  # the same prompt as with tools, generated without their grammar
        messages = ovchat.tools.plan_for(TOOLS).prepare(messages)
    *_, last = model.stream_generate(messages, max_new_tokens=budget, temperature=0.8, seed=i, **kwargs)
    return last


def with_template(folder: Path, template: Path) -> Path:
    """A copy of the model folder (its files linked) with `template` as its chat_template.jinja."""
    copy = Path(tempfile.mkdtemp(prefix="ovchat-template-")) / folder.name
    copy.mkdir()
    for item in folder.iterdir():
        if item.name != "chat_template.jinja":
            (copy / item.name).symlink_to(item.resolve())
    shutil.copyfile(template, copy / "chat_template.jinja")
    return copy


def valid(last) -> bool:
    schemas = {t.name: t.parameters for t in TOOLS}
    if last.finish_reason != "tool_calls":
        return False
    try:
        for call in last.tool_calls:
            jsonschema.validate(json.loads(call.arguments), schemas[call.name])
    except (jsonschema.ValidationError, json.JSONDecodeError, KeyError):
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--labels", default="required,named,auto,described,no tools",
                        help="which runs, comma-separated: required, named, auto, described (the tools' "
                        "prompt without their grammar), 'no tools'")
    parser.add_argument("--tag", required=True, help="names the results file: the CPU, e.g. epyc_avx2 or xeon")
    parser.add_argument("--chat-template", type=Path, help="a chat template to use instead of the model's own")
    args = parser.parse_args()
    model = ovchat.load(args.model)
    if args.chat_template:
        model = ovchat.load(str(with_template(model.path, args.chat_template)))
        print("tool format:", model.tool_format.name if model.tool_format else "generic", flush=True)
    model.generate("warm up", max_new_tokens=4)
    rows: dict[str, dict] = {}
    for label in args.labels.split(","):
        outcomes, rates, cut = [], [], 0
        for i in range(args.requests):
            choice = {"required": "required", "named": TOOLS[i % len(TOOLS)].name, "auto": "auto"}.get(label)
            last = run(model, i, choice, args.max_new_tokens, described=label == "described")
            cut += last.finish_reason == "length"
            if last.tokens_per_second:
                rates.append(last.tokens_per_second)
            if label == "auto":
                outcomes.append("call" if last.tool_calls else "reply")
                if last.tool_calls:
                    outcomes[-1] += " (valid)" if valid(last) else " (invalid)"
            elif choice:
                outcomes.append("valid" if valid(last) else "invalid")
        rows[label] = {"outcomes": {k: outcomes.count(k) for k in sorted(set(outcomes))}, "cut_by_budget": cut,
                       "decode_tok_s_median": round(statistics.median(rates), 1) if rates else None}
        print(label, rows[label], flush=True)
    about = machine()
    free = rows.get("described", rows.get("no tools", {})).get("decode_tok_s_median")
    lines = [
        f"# Tool calls: validity and decode speed ({args.model}, {args.requests} requests each"
        + (f", {args.chat_template.name}: {model.tool_format.name if model.tool_format else 'generic'} format)"
           if args.chat_template else ")"),
        "",
        f"{about['cpu']} ({', '.join(about['isa'])}), {about['cores']} cores, OpenVINO {about['openvino']}. "
        f"`.venv/bin/python benchmarks/tools.py --model {args.model} --requests {args.requests} --tag {args.tag}"
        + (f" --chat-template benchmarks/templates/{args.chat_template.name}" if args.chat_template else "") + "`; "
        f"sampled (temperature 0.8, seeded), up to {args.max_new_tokens} new tokens.",
        "",
        "| tool_choice | outcomes | cut by the budget | decode tok/s (median) | vs the same prompt, free |",
        "|---|---|---:|---:|---:|",
    ]
    for label, row in rows.items():
        rate = row["decode_tok_s_median"]
        ratio = f"{rate / free:.2f}×" if rate and free else ""
        outcomes = ", ".join(f"{k} {v}" for k, v in row["outcomes"].items()) or "free text"
        lines.append(f"| {label} | {outcomes} | {row['cut_by_budget']} | {rate} | {ratio} |")
    out = Path(__file__).parent / "results" / f"tools_{args.tag}"
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"machine": about, "rows": rows}, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
