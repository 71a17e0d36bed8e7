"""The evaluation report for people: a table, the worst answers side by side, a PNG chart."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

from ..bench import pyplot


def _pm(entry: dict, digits: int = 3) -> str:
    value, se = entry["value"], entry["se"]
    if abs(value) >= 1e5:  # a random or broken model: the size is what matters
        return f"{value:.2e} ± {se:.1e}"
    return f"{value:.{digits}f} ± {se:.{digits}f}"


def _precision(p: dict) -> str:
    activations = f", int8 activations (group {p['dynamic_quantization']})" if p.get("dynamic_quantization") else ""
    return f"{p['inference']} inference, {p['kv_cache']} KV cache{activations}"


def format_table(report: dict) -> str:
    """The comparison table: the reference's perplexity, then each model against the reference."""
    ref, text, prompts = report["reference"], report["text"], report["prompts"]
    lines = [
        f"reference: {ref['name']} ({ref['kind']})",
        f"text: {Path(text['path']).name}, {text['tokens']} tokens scored "
        f"(window {text['window']}, stride {text['stride']})",
    ]
    models = {_precision(m["precision"]) for m in report["models"]}
    lines.append(f"precision: {', '.join(sorted(models))} (models), {_precision(ref['precision'])} (reference)")
    if prompts:
        lines.append(
            f"prompts: {Path(prompts['path']).name}, {prompts['count']} greedy answers of at most "
            f"{prompts['new_tokens']} tokens"
        )
    width = max(24, *(len(m["name"]) for m in report["models"]))
    head = f"{'model':<{width}}  {'perplexity':>16}  {'ppl ratio':>15}  {'top-1 agree':>15}  {'KL mean (p99)':>16}"
    lines += ["", head + (f"  {'similarity (min)':>16}" if prompts else "")]
    ppl = ref["perplexity"]
    lines.append(
        f"{'reference':<{width}}  {_pm(ppl, digits=2):>16}  {'1':>15}  {'1':>15}  {'0':>16}"
        + (f"  {'1':>16}" if prompts else "")
    )
    for m in report["models"]:
        kl = f"{m['kl']['mean']:.4f} ({m['kl']['p99']:.3f})"
        row = (
            f"{m['name']:<{width}}  {_pm(m['perplexity'], digits=2):>16}  {_pm(m['ppl_ratio']):>15}  "
            f"{_pm(m['top1_agreement']):>15}  {kl:>16}"
        )
        if prompts:
            s = m["similarity"]
            row += f"  {s['mean']:.3f} ({s['min']:.3f})".rjust(18)
        lines.append(row)
    return "\n".join(lines)


def format_worst(report: dict, count: int = 3) -> str:
    """Each model's `count` least similar answers, next to the reference's."""
    prompts = report["prompts"]
    if not prompts or count <= 0:
        return ""
    columns = max(60, min(shutil.get_terminal_size((120, 24)).columns, 160))
    half = (columns - 5) // 2
    out = []
    for m in report["models"]:
        order = sorted(range(len(m["answers"])), key=lambda i: m["answers"][i]["similarity"])[:count]
        out.append(f"\nleast similar answers of {m['name']}:")
        for i in order:
            item, answer = prompts["items"][i], m["answers"][i]
            out.append(f"── {answer['similarity']:.3f} · {item['prompt']}")
            left = _wrap(answer["answer"], half)
            right = _wrap(item["reference_answer"], half)
            out.append(f"   {'model':<{half}} │ reference")
            for k in range(max(len(left), len(right))):
                a = left[k] if k < len(left) else ""
                b = right[k] if k < len(right) else ""
                out.append(f"   {a:<{half}} │ {b}")
    return "\n".join(out)


def _wrap(text: str, width: int) -> list[str]:
    lines = []
    for paragraph in (text.strip() or "(empty)").splitlines():
        lines += textwrap.wrap(paragraph, width, replace_whitespace=False) or [""]
    return lines


def plot(report: dict, out: Path) -> Path:
    """A PNG comparing the models: perplexity, top-1 agreement, KL divergence and answer similarity."""
    plt = pyplot()
    models = report["models"]
    names = [m["name"] for m in models]
    panels = [
        (
            "perplexity (reference: line)",
            [m["perplexity"]["value"] for m in models],
            [m["perplexity"]["se"] for m in models],
        ),
        (
            "top-1 agreement",
            [m["top1_agreement"]["value"] for m in models],
            [m["top1_agreement"]["se"] for m in models],
        ),
        ("KL(reference || model)", [m["kl"]["mean"] for m in models], [m["kl"]["se"] for m in models]),
    ]
    if report["prompts"]:
        panels.append(
            ("answer similarity", [m["similarity"]["mean"] for m in models], [m["similarity"]["se"] for m in models])
        )
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.2 + 0.12 * max(len(n) for n in names)))
    for axis, (title, values, errors) in zip(axes, panels, strict=True):
        axis.bar(range(len(values)), values, yerr=errors, capsize=4, color="#4a7ab5")
        axis.set_xticks(range(len(values)), names, rotation=30, ha="right", fontsize=7)
        axis.set_title(title, fontsize=9)
    axes[0].axhline(report["reference"]["perplexity"]["value"], color="#c0504d", linestyle="--", linewidth=1)
    fig.suptitle(
        f"vs {report['reference']['name']} · {report['text']['tokens']} tokens of {Path(report['text']['path']).name}",
        fontsize=9,
    )
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
