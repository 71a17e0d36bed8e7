"""What an export costs: peak memory and wall time of `ovchat export`, per model and recipe, step by step.

    .venv/bin/python benchmarks/export_memory.py --models smollm2,phi3-8l --recipes int8,sample,default \\
        --tag epyc_avx2
    .venv/bin/python benchmarks/export_memory.py --report-only --tag epyc_avx2

Each export runs as `ovchat export SRC -o TMP --force` in a child process; every 0.5 s this script sums
the resident memory (anonymous and file-backed) of that process and all its descendants (the
converter's child), and notes the export's last log line, so each peak is tied to the step that
made it (converting, compressing, calibrating, checking). Beside each row: ovchat's own estimate
(`ovchat.build.estimate`) made before the export starts, and the measured/estimated ratio.

Models: `smollm2` (the default, 135M, a GGUF), `phi3-8l` / `phi3-32l` (Phi-3-mini-4k's widths with 8
or all 32 layers, random weights saved in bf16 as the hub ships them; benchmarks/phi3_shape.py).
Rows are appended to results/export_memory_TAG.json (a model+recipe measured again replaces its row).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

RECIPES = {  # ovchat.Recipe fields per recipe name; every field spelled out
    "int8": {"weight_format": "int8"},
    "sample": {"group_size": 128, "ratio": 0.6, "sym": True, "awq": False, "scale_estimation": False},
    "g128-r0.8": {"group_size": 128, "ratio": 0.8, "sym": True, "awq": False, "scale_estimation": False},
    "default": {"group_size": 32, "ratio": 0.5, "sym": True, "awq": True, "scale_estimation": True},
}


def flags(fields: dict) -> list[str]:
    """`ovchat export` options for Recipe fields."""
    out = []
    for name, value in fields.items():
        option = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            out.append(option if value else option.replace("--", "--no-", 1) if name != "sym" else "--asym")
        else:
            out += [option, str(value)]
    return out


def source_for(name: str) -> str:
    if name == "smollm2":
        return "smollm2-135m"
    if name.startswith("phi3-") and name.endswith("l"):
        import phi3_shape

        return str(phi3_shape.source_folder(int(name[5:-1])))
    raise SystemExit(f"unknown model {name}: smollm2, phi3-8l, phi3-32l")


def _tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo += children.get(pid, [])
    return pids


def _rss(pids: list[int]) -> tuple[int, int]:
    anon = file = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("RssAnon:"):
                    anon += int(line.split()[1]) * 1024
                elif line.startswith(("RssFile:", "RssShmem:")):
                    file += int(line.split()[1]) * 1024
        except OSError:
            pass
    return anon, file


def step_name(line: str) -> str:
    """A log line as a step's name: a progress bar's description without its counts, at most 60 characters."""
    text = re.sub(r":?\s*\d+%\|.*$", "", line.strip())
    text = re.sub(r":?\s*done in [\d:]+$", "", text)
    return "" if text.startswith("/") else text[:60]


def measure(source: str, flags: list[str], out: Path) -> dict:
    cmd = [sys.executable, "-m", "ovchat.cli", "export", source, "-o", str(out), "--force", "--no-check", *flags]
    started = time.time()
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    step = {"now": "starting"}
    lines: list[str] = []

    def read() -> None:
        for line in child.stdout:
            lines.append(line.rstrip())
            text = step_name(line)
            if text:
                step["now"] = text

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    peaks: dict[str, dict] = {}
    peak = {"total": 0, "anon": 0}
    while child.poll() is None:
        anon, file = _rss(_tree(child.pid))
        row = peaks.setdefault(step["now"], {"total": 0, "anon": 0, "at_s": round(time.time() - started)})
        row["total"], row["anon"] = max(row["total"], anon + file), max(row["anon"], anon)
        peak["total"], peak["anon"] = max(peak["total"], anon + file), max(peak["anon"], anon)
        time.sleep(0.5)
    reader.join()
    result = {
        "seconds": round(time.time() - started, 1),
        "returncode": child.returncode,
        "peak_gb": round(peak["total"] / 1e9, 2),
        "peak_anon_gb": round(peak["anon"] / 1e9, 2),
        "steps": {k: {"peak_gb": round(v["total"] / 1e9, 2), "anon_gb": round(v["anon"] / 1e9, 2), "at_s": v["at_s"]}
                  for k, v in peaks.items()},
        "folder_gb": round(sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 1e9, 2)
        if out.is_dir() else None,
    }
    if child.returncode:
        result["tail"] = lines[-5:]
    manifest = out / "ovchat_manifest.json"
    if manifest.is_file():
        result["manifest_peak_gb"] = json.loads(manifest.read_text()).get("export_peak_memory_gb")
    return result


def estimate(source: str, recipe: str) -> dict | None:
    try:
        from ovchat import catalog
        from ovchat.build import estimate as est
        from ovchat.build.recipe import Recipe
    except ImportError:
        return None
    path = catalog.materialize(catalog.resolve(source))
    cost = est.estimate(path, Recipe(**RECIPES[recipe]))
    return {"peak_gb": round(cost.peak_bytes / 1e9, 2), "seconds": round(cost.seconds)}


def cpu_name() -> str:
    from ovchat.precision import cpu_info, isa

    return f"{cpu_info()[0]} ({', '.join(isa())})"


def report(rows: list[dict], path: Path) -> None:
    lines = [
        f"# Export cost: peak memory and time of `ovchat export` ({rows[0]['cpu'] if rows else ''})",
        "",
        "Each row: `.venv/bin/python benchmarks/export_memory.py --models MODEL --recipes RECIPE "
        f"--tag {path.stem.removeprefix('export_memory_')}`, one export at a time (peak: resident memory of",
        "the export and its converter child together, sampled every 0.5 s; estimate: `ovchat.build.estimate`).",
        "",
        "| model | recipe | wall time | peak memory | estimated peak | measured / estimate | estimated time | "
        "peak after the line |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        m, e = row["measured"], estimate(source_for(row["model"]), row["recipe"]) or {}
        ratio = f"{m['peak_gb'] / e['peak_gb']:.2f}" if e.get("peak_gb") else "-"
        worst = step_name(max(m["steps"].items(), key=lambda kv: kv[1]["peak_gb"])[0]) if m["steps"] else "-"
        status = "" if m["returncode"] == 0 else f" (failed: exit {m['returncode']})"
        lines.append(
            f"| {row['model']} | {row['recipe']} | {m['seconds'] / 60:.1f} min{status} | {m['peak_gb']:.2f} GB | "
            f"{e.get('peak_gb', '-')} GB | {ratio} | {e.get('seconds', 0) / 60:.1f} min | {worst} |"
        )
    lines += ["", "## Step by step", ""]
    for row in rows:
        steps = {}
        for name, v in row["measured"]["steps"].items():  # one entry per step (old rows kept bar counts)
            old = steps.setdefault(step_name(name) or name, v)
            old["peak_gb"] = max(old["peak_gb"], v["peak_gb"])
        parts = [f"{k} → {v['peak_gb']} GB from {v['at_s']} s" for k, v in steps.items() if v["peak_gb"] >= 0.1]
        lines.append(f"- **{row['model']} / {row['recipe']}**: " + "; ".join(parts))
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="smollm2,phi3-8l")
    parser.add_argument("--recipes", default="int8,sample,default")
    parser.add_argument("--tag", required=True, help="names the results file: the CPU, e.g. epyc_avx2 or xeon")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the Phi-3-shaped exports for compare.py")
    parser.add_argument("--out-dir", type=Path, default=HERE / "results")
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    path = args.out_dir / f"export_memory_{args.tag}.json"
    rows = json.loads(path.read_text()) if path.is_file() else []
    if not args.report_only:
        from ovchat import catalog

        scratch = catalog.models_home() / "bench-exports"
        for model in args.models.split(","):
            source = source_for(model)
            for recipe in args.recipes.split(","):
                out = scratch / f"{model}-{recipe}"
                if args.keep and model.startswith("phi3-"):  # where phi3_shape.py and compare.py look
                    from ovchat.build.recipe import Recipe

                    name = Path(source).name
                    out = catalog.models_home() / "models" / f"{name}-{Recipe(**RECIPES[recipe]).tag}"
                print(f"{model} / {recipe}: estimate {estimate(source, recipe)}", flush=True)
                measured = measure(source, flags(RECIPES[recipe]), out)
                if not (args.keep and model.startswith("phi3-")):
                    shutil.rmtree(out, ignore_errors=True)
                print(f"  measured {json.dumps(measured)}", flush=True)
                rows = [r for r in rows if (r["model"], r["recipe"]) != (model, recipe)]
                rows.append({"model": model, "recipe": recipe, "cpu": cpu_name(), "measured": measured})
                path.write_text(json.dumps(rows, indent=1))
    report(rows, path)


if __name__ == "__main__":
    main()
