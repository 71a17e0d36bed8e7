"""`ovchat bench`: how fast a model runs here — load, time to first token, prefill and decode rates.

Every run reads a prompt of exactly the asked token count and generates exactly the asked number of
tokens (end-of-sequence ignored), so runs are comparable; each run's prompt starts differently, so
the prefix cache never serves a prefill from an earlier run. Warm-up runs are made and discarded.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from . import runtime
from .config import DEFAULT_DEVICE
from .errors import OvchatError, print_nothing
from .precision import Precision, cpu_info, isa
from .precision import choose as choose_precision

# Ordinary English, so prompts are made of ordinary tokens; repeated to any length.
FILLER = (
    "The river ran past the old mill, where the miller kept a ledger of every sack of grain. "
    "In the spring the water rose, and the children counted the boats that drifted by the bridge. "
)
METRICS = ("ttft_ms", "prefill_tok_s", "tpot_ms", "decode_tok_s")
# What a run measures unless told: a short, a medium and a long prompt, each answered 5 times after
# one discarded warm-up run.
DEFAULT_PROMPT_TOKENS = (32, 512, 2048)
DEFAULT_NEW_TOKENS = 128
DEFAULT_RUNS = 5
DEFAULT_WARMUP = 1


def machine() -> dict:
    """What the numbers depend on: CPU model, cores, vector ISA, OpenVINO version."""
    import openvino as ov

    return {
        "cpu": cpu_info()[0],
        "cores": os.cpu_count(),
        "isa": isa(),
        "openvino": ov.get_version(),
        "python": platform.python_version(),
    }


def exact_prompt(tokenizer, length: int, variant: int) -> list[int]:
    """`length` token ids of ordinary text whose first tokens differ with `variant`."""
    head = runtime.encode(tokenizer, f"Note {variant}: ", add_special_tokens=False)
    body = runtime.encode(tokenizer, FILLER, add_special_tokens=False)
    ids = list(head)
    while len(ids) < length:
        ids += body
    return ids[:length]


def _size_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e6


def _peak_rss_mb() -> float:
    # VmHWM, not getrusage: Linux carries ru_maxrss across exec, so a process started by a bigger one
    # would report its parent's peak.
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _summary(values: Sequence[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def run(
    model: str,
    *,
    device: str = DEFAULT_DEVICE,
    prompt_tokens: Sequence[int] = DEFAULT_PROMPT_TOKENS,
    new_tokens: int = DEFAULT_NEW_TOKENS,
    runs: int = DEFAULT_RUNS,
    warmup: int = DEFAULT_WARMUP,
    cache_dir: str | None = None,
    config: dict | None = None,
    precision: str | None = None,
    kv_cache_precision: str | None = None,
    progress: Callable[[int, int], None] = lambda done, total: None,
    log: Callable[[str], None] = print_nothing,
) -> dict:
    """Measure `model` and return the report (see `format_table` and the JSON it is saved as).

    `config` adds OpenVINO properties to the runtime's, and `precision`/`kv_cache_precision` override the
    precisions, as `ovchat.load`'s do; the report says which ran."""
    if runs < 1 or warmup < 0 or new_tokens < 1 or not prompt_tokens or min(prompt_tokens) < 1:
        raise OvchatError("runs, new tokens and every prompt length must be positive (warm-up may be 0)")
    choose_precision(device, precision, kv_cache_precision, config=config)  # a bad one: said before any export
    from .loader import load, prepare

    path, _ = prepare(model, device, log=log)  # exporting, if needed, is not part of load time
    context = runtime.context_length(path)
    too_long = [n for n in prompt_tokens if n + new_tokens > context]
    if too_long:
        raise OvchatError(
            f"prompt {too_long[0]} + {new_tokens} new tokens exceed {path.name}'s context of {context} tokens; "
            "use shorter --prompt-tokens or fewer --new-tokens"
        )
    started = time.perf_counter()
    properties = dict(config or {})
    handle = load(
        str(path),
        device=device,
        cache_dir=cache_dir,
        config=properties,
        precision=precision,
        kv_cache_precision=kv_cache_precision,
        log=log,
    )
    load_s = time.perf_counter() - started

    total, done, variant = len(prompt_tokens) * (runs + warmup), 0, 0
    rows = []
    for length in prompt_tokens:
        samples: dict[str, list[float]] = {m: [] for m in METRICS}
        for i in range(warmup + runs):
            variant += 1
            ids = exact_prompt(handle.tokenizer, length, variant)
            timing = handle.timed_generate(ids, new_tokens)  # every run generates exactly new_tokens
            if timing.prompt_tokens != length or timing.new_tokens != new_tokens:
                raise OvchatError(
                    f"expected {length} → {new_tokens} tokens, the pipeline did "
                    f"{timing.prompt_tokens} → {timing.new_tokens}"
                )
            done += 1
            progress(done, total)
            if i < warmup:
                continue
            ttft, tpot = timing.ttft_ms, timing.tpot_ms
            samples["ttft_ms"].append(ttft)
            samples["prefill_tok_s"].append(length / ttft * 1000)
            samples["tpot_ms"].append(tpot)
            samples["decode_tok_s"].append(1000 / tpot)
        summaries = {m: _summary(v) for m, v in samples.items()}
        rows.append(
            {"prompt_tokens": length, **summaries, "samples": {m: [round(x, 3) for x in v] for m, v in samples.items()}}
        )
    return {
        "model": handle.name,
        "folder": str(path),
        "device": device,
        "config": properties,
        "precision": handle.precision.as_dict(),
        "size_mb": round(_size_mb(path), 1),
        "load_s": round(load_s, 3),
        "new_tokens": new_tokens,
        "runs": runs,
        "warmup": warmup,
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "machine": machine(),
        "results": rows,
    }


def format_table(report: dict) -> str:
    m = report["machine"]
    lines = [
        f"{report['model']} on {report['device']} · {report['size_mb']:.0f} MB on disk · load {report['load_s']:.2f} s"
        f" · peak RSS {report['peak_rss_mb']:.0f} MB",
        f"{m['cpu']}, {m['cores']} cores, {' '.join(m['isa']) or 'no AVX2'}, OpenVINO {m['openvino']}",
        f"precision: {Precision(**report['precision'])}",
        f"{report['new_tokens']} new tokens per run, median (min–max) of {report['runs']} runs, "
        f"{report['warmup']} warm-up",
        "",
        f"{'prompt':>7}  {'first token ms':>20}  {'prefill tok/s':>20}  {'per token ms':>18}  {'decode tok/s':>18}",
    ]
    for row in report["results"]:
        cells = []
        for name, width, digits in (
            ("ttft_ms", 20, 0),
            ("prefill_tok_s", 20, 0),
            ("tpot_ms", 18, 1),
            ("decode_tok_s", 18, 1),
        ):
            s = row[name]
            cells.append(f"{s['median']:.{digits}f} ({s['min']:.{digits}f}–{s['max']:.{digits}f})".rjust(width))
        lines.append(f"{row['prompt_tokens']:>7}  " + "  ".join(cells))
    return "\n".join(lines)


def pyplot():
    """matplotlib.pyplot drawing to files (no display), or a clear error when matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        raise OvchatError("--plot needs matplotlib: pip install 'ovchat[bench]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot(report: dict, out: Path) -> Path:
    """A PNG for people: time to first token and decode rate by prompt length."""
    plt = pyplot()
    rows = report["results"]
    labels = [str(r["prompt_tokens"]) for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    for axis, name, title in (
        (left, "ttft_ms", "time to first token (ms)"),
        (right, "decode_tok_s", "decode (tokens/s)"),
    ):
        medians = [r[name]["median"] for r in rows]
        spread = [
            [m - r[name]["min"] for m, r in zip(medians, rows, strict=True)],
            [r[name]["max"] - m for m, r in zip(medians, rows, strict=True)],
        ]
        axis.bar(labels, medians, yerr=spread, capsize=4, color="#4a7ab5")
        axis.set_title(title)
        axis.set_xlabel("prompt tokens")
    fig.suptitle(f"{report['model']} · {report['machine']['cpu']} · {report['machine']['cores']} cores", fontsize=9)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
