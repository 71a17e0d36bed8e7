"""`ovchat eval`: how close an exported (quantized) model stays to the original it was made from.

    import ovchat
    report = ovchat.evaluate(["smollm2-135m"])   # the default int4 export vs the float32 original

Everything is measured against a reference, by default the unquantized model the export was made
from, run in transformers in float32 on the CPU (`reference=` takes another spec; an exported
folder as reference runs in OpenVINO and needs no torch):
- perplexity of each model and of the reference on the same tokens of a text (sliding window);
- next-token agreement on those tokens: top-1 match rate and KL(reference || model);
- answer similarity on chat prompts: greedy answers compared with a sentence-embedding model.

The report (what `ovchat eval --json` writes):
    {"format": 1,
     "reference": {"name", "spec", "folder", "kind", "precision", "perplexity": PPL},
     "text": {"path", "tokens", "window", "stride", "windows"},
     "prompts": null | {"path", "count", "new_tokens",
                        "items": [{"prompt", "category", "reference_answer"}]},
     "models": [{"name", "folder", "recipe", "weights_mb", "precision", "perplexity": PPL,
                 "ppl_ratio": {"value", "se"}, "top1_agreement": {"value", "se"},
                 "kl": {"mean", "se", "p99", "max"},
                 "similarity": null | {"mean", "se", "min", "count"},
                 "answers": [{"answer", "similarity"}]}],        # in the order of prompts.items
     "device", "machine", "seconds": {"text", "answers", "total"}}
    PPL = {"value", "se", "nll", "nll_se", "tokens"}   (se of ppl by the delta method: ppl * nll_se)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

from .. import catalog, runtime
from ..config import DEFAULT_DEVICE
from ..errors import OvchatError, print_nothing
from ..loader import load, prepare
from ..precision import choose as choose_precision
from .answers import Embedder, embedding_model_dir, load_prompts, openvino_answers, similarities, torch_answers
from .logits import OpenVINOLogits, TorchLogits, open_reference, reference_source, windows
from .metrics import mean_se
from .scoring import (
    DEFAULT_MAX_TOKENS,
    DEFAULT_NEW_TOKENS,
    DEFAULT_PROMPT_LIMIT,
    DEFAULT_PROMPTS,
    DEFAULT_TEXT,
    DEFAULT_WINDOW,
    TOKENIZER_SAMPLE_CHARS,
    read_text,
    score_text,
)


def _check_same_tokens(expected: list[int], got: list[int], name: str, model: str) -> None:
    if got == expected:
        return
    at = next((i for i, (a, b) in enumerate(zip(expected, got)) if a != b), min(len(expected), len(got)))  # noqa: B905
    raise OvchatError(
        f"{name} tokenizes the text differently from {model} (first difference at token {at}): "
        "a reference must share the model's tokenizer; pass the model's original with --reference"
    )


def _label(folder: Path, info: dict | None, taken: set[str]) -> str:
    from ..build.inventory import recipe_tag

    name = runtime.model_name(folder, info)
    name = Path(name).name if "/" in name and Path(name).expanduser().exists() else name  # a path: its last part
    if info and info.get("recipe"):
        name += " " + recipe_tag(info["recipe"])
    label, n = name, 1
    while label in taken:
        n += 1
        label = f"{name} ({n})"
    taken.add(label)
    return label


def answer_prompts(
    ref,
    folders: Sequence[Path],
    items: Sequence[dict],
    new_tokens: int,
    device: str,
    step=lambda: None,
    precision: str | None = None,
    purpose: str = "reference",
) -> tuple[list[str], list[list[str]]]:
    """Greedy answers of the reference (a scorer) and of each exported folder, on the same prompt tokens."""
    # Answered in the scores' precision too: by default the answers measure the weights, not the runtime.
    config = choose_precision(device, precision, purpose=purpose).properties()
    ref_config = choose_precision(device, precision, purpose="reference").properties()  # as the ref scores

    def open_folder(folder: Path, config: dict = config):
        return load(str(folder), device=device, config=config)

    first = open_folder(folders[0])
    if isinstance(ref, TorchLogits):  # on exactly the token ids the first model reads
        ref_answers = torch_answers(ref, first, items, new_tokens, step)
    else:
        ref_answers = openvino_answers(open_folder(ref.folder, ref_config), items, new_tokens, step)
    answers = []
    for folder in folders:
        handle = first if folder == folders[0] else open_folder(folder)
        answers.append(openvino_answers(handle, items, new_tokens, step))
    return ref_answers, answers


def evaluate(
    models: str | Sequence[str] = (catalog.DEFAULT_MODEL,),
    *,
    reference: str | None = None,
    text: str | Path | None = None,
    prompts: str | Path | None = None,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    window: int | None = None,
    stride: int | None = None,
    prompt_limit: int | None = DEFAULT_PROMPT_LIMIT,
    new_tokens: int = DEFAULT_NEW_TOKENS,
    device: str = DEFAULT_DEVICE,
    precision: str | None = None,
    purpose: str = "reference",
    progress: Callable[[int, int], None] = lambda done, total: None,
    log: Callable[[str], None] = print_nothing,
) -> dict:
    """Compare each model (a spec; exported once if needed) with the reference; return the report.

    `text` (default: the shipped Alice chapters) is cut to its first `max_tokens` tokens and scored
    in windows of `window` tokens (default: min(context, 512)) moved by `stride` (default: half a
    window). `prompts` is a JSON-lines file (default: the shipped 58 prompts), of which the first
    `prompt_limit` are answered (None: all; 0: no answers). Exported models compute in f32 with an f32
    KV cache on every CPU, so scores mean the same everywhere, unless `precision` (f32, bf16, f16) says;
    `purpose="speed"` scores them as `generate` runs them instead (ovchat.precision), the reference
    staying in its own precision.
    """
    started = time.perf_counter()
    specs = [models] if isinstance(models, str) else list(models)
    if not specs:
        raise OvchatError("no model to evaluate: pass at least one --model")
    if max_tokens < 2 or new_tokens < 1 or (prompt_limit is not None and prompt_limit < 0):
        raise OvchatError("max tokens must be at least 2, new tokens at least 1, and the prompt limit not negative")
    text_path = Path(text) if text is not None else DEFAULT_TEXT
    content = read_text(text_path)
    prompt_path = Path(prompts) if prompts is not None else DEFAULT_PROMPTS
    items = load_prompts(prompt_path, prompt_limit) if prompt_limit != 0 else []
    if items:
        embedding_model_dir()  # missing: say so before the long work

    choose_precision(device, precision, purpose=purpose)  # a bad precision: say so before the long work
    exported = [prepare(spec, device, log=log) for spec in specs]
    ref_source = reference_source(exported[0][0], reference)
    import openvino_genai as ov_genai

    tokenizer = ov_genai.Tokenizer(str(exported[0][0]))
    ids = runtime.encode(tokenizer, content)[:max_tokens]
    if len(ids) < 2:
        raise OvchatError(
            f"{text_path} is {len(ids)} token long; perplexity needs at least 2 tokens: pass a longer text"
        )
    sample = content[:TOKENIZER_SAMPLE_CHARS]
    expected = runtime.encode(tokenizer, sample, add_special_tokens=False)
    for (path, _), spec in zip(exported[1:], specs[1:], strict=True):
        _check_same_tokens(expected, runtime.encode(ov_genai.Tokenizer(str(path)), sample, False), spec, specs[0])

    ref = open_reference(ref_source, device, log, precision)
    if isinstance(ref, TorchLogits):
        from transformers import AutoTokenizer

        ref_ids = AutoTokenizer.from_pretrained(str(ref.folder)).encode(sample, add_special_tokens=False)
    else:
        ref_ids = runtime.encode(ov_genai.Tokenizer(str(ref.folder)), sample, add_special_tokens=False)
    _check_same_tokens(expected, ref_ids, f"the reference {ref_source.location}", specs[0])
    scorers = [OpenVINOLogits(path, device, precision=precision, purpose=purpose) for path, _ in exported]
    for scorer, spec in zip(scorers, specs, strict=True):
        if scorer.vocab_size != ref.vocab_size:
            raise OvchatError(
                f"{spec} has {scorer.vocab_size} logits per token but the reference {ref_source.location} has "
                f"{ref.vocab_size}: pass the model's original with --reference"
            )
    context = min(s.context_length for s in (ref, *scorers))
    window = window or min(context, DEFAULT_WINDOW)
    if window > context:
        raise OvchatError(f"--window {window} is longer than the context of {context} tokens: use at most {context}")
    stride = stride or max(1, window // 2)
    spans = windows(len(ids), window, stride)

    total, done = len(spans) + len(items) * (len(specs) + 1), 0

    def step() -> None:
        nonlocal done
        done += 1
        progress(done, total)

    log(f"scoring {len(ids)} tokens of {text_path.name} in {len(spans)} windows of {window} (stride {stride})")
    ref_tally, *tallies = score_text([ref, *scorers], ids, window, stride, step)
    text_seconds = time.perf_counter() - started

    taken: set[str] = set()
    rows = [
        {
            "name": _label(path, info, taken),
            "folder": str(path),
            "recipe": (info or {}).get("recipe"),
            "weights_mb": round((path / "openvino_model.bin").stat().st_size / 1e6, 1),
            "precision": scorer.precision,
            "perplexity": tally.perplexity(),
            **tally.versus_reference(),
            "similarity": None,
            "answers": [],
        }
        for (path, info), tally, scorer in zip(exported, tallies, scorers, strict=True)
    ]
    del scorers  # the compiled models: the answers load pipelines
    prompt_report = None
    if items:
        log(f"answering {len(items)} prompts with the reference and {len(specs)} model(s), greedy")
        ref_answers, model_answers = answer_prompts(
            ref, [p for p, _ in exported], items, new_tokens, device, step, precision, purpose
        )
        embed = Embedder()
        for row, answers in zip(rows, model_answers, strict=True):
            sims = similarities(embed, answers, ref_answers)
            row["answers"] = [
                {"answer": a, "similarity": round(float(x), 4)} for a, x in zip(answers, sims, strict=True)
            ]
            mean, se = mean_se(sims)
            row["similarity"] = {"mean": mean, "se": se, "min": float(sims.min()), "count": len(sims)}
        prompt_report = {
            "path": str(prompt_path),
            "count": len(items),
            "new_tokens": new_tokens,
            "items": [
                {"prompt": p["prompt"], "category": p.get("category"), "reference_answer": a}
                for p, a in zip(items, ref_answers, strict=True)
            ],
        }
    from ..bench import machine

    total_seconds = time.perf_counter() - started
    return {
        "format": 1,
        "reference": {
            "name": ref_source.name,
            "spec": reference or ref_source.location,
            "folder": str(ref.folder),
            "kind": ref.kind,
            "precision": ref.precision,
            "perplexity": ref_tally.perplexity(),
        },
        "text": {
            "path": str(text_path),
            "tokens": ref_tally.tokens,
            "window": window,
            "stride": stride,
            "windows": len(spans),
        },
        "prompts": prompt_report,
        "models": rows,
        "device": device,
        "machine": machine(),
        "seconds": {
            "text": round(text_seconds, 1),
            "answers": round(total_seconds - text_seconds, 1),
            "total": round(total_seconds, 1),
        },
    }
