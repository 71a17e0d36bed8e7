"""Where a decode step's time goes: OpenVINO's per-node counters for one exported model, or several.

    .venv/bin/python benchmarks/profile_step.py FOLDER [FOLDER ...] [--steps 32] [--out results/profile_step]

Each folder is compiled with ovchat's runtime properties plus PERF_COUNT, fed a 32-token prompt, then
--steps single-token decode steps; the first 4 are warm-up. For every kind of node it prints the time
per step, and for the matrix products (FullyConnected) the time per projection (q/k/v/o, gate/up/down,
lm_head) beside the bytes of weights that projection reads, so "GB/s" says whether a kernel is bound by
memory (near the machine's read bandwidth) or by its own work (far below it). The counters hold each
node's own time only: the step's clock also holds the infer call and what runs between nodes, and
OpenVINO keeps each node's average in whole microseconds, so the sum runs below the step (most on
small models with many nodes). Shares are of the counted time. Writes OUT.md and OUT.json.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WARMUP = 4


def weight_bytes_per_matmul(model) -> dict[str, int]:
    """Bytes of the constants upstream of each MatMul's weight input (packed int4/int8, scales, zero points)."""
    sizes = {}
    for op in model.get_ops():
        if op.get_type_name() != "MatMul":
            continue
        total, stack, seen = 0, [op.input_value(1).get_node()], set()
        while stack:
            node = stack.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            if node.get_type_name() == "Constant":
                total += node.get_byte_size()
            elif node.get_type_name() in ("Convert", "Multiply", "Subtract", "Reshape", "Transpose"):
                stack += [v.get_node() for v in node.input_values()]
        sizes[op.get_friendly_name()] = total
    return sizes


def projection(name: str) -> str:
    match = re.search(r"(lm_head|[a-z_]+_proj)", name)
    return match.group(1) if match else "other"


def profile(folder: Path, steps: int) -> dict:
    import openvino as ov

    from ovchat import runtime
    from ovchat.eval.logits import step_inputs

    core = ov.Core()
    model = core.read_model(folder / "openvino_model.xml")
    weights = weight_bytes_per_matmul(model)
    # No compile cache: a blob loaded from it may not carry the counters.
    config = runtime.runtime_properties({"PERF_COUNT": "YES"}, "")
    compiled = core.compile_model(model, "CPU", config)
    names = {i.get_any_name() for i in compiled.inputs}
    request = compiled.create_infer_request()

    def infer(ids: list[int], past: int) -> float:
        feed = step_inputs(ids, past, names)
        started = time.perf_counter()
        request.infer(feed)
        return time.perf_counter() - started

    def counters() -> tuple[dict, dict]:
        # OpenVINO reports each node's time averaged over every call so far: keep the running sums.
        calls = len(step_ms) + 1
        per_node, kind = {}, {}
        for p in request.profiling_info:
            per_node[p.node_name] = p.real_time.total_seconds() * 1e6 * calls
            kind[p.node_name] = p.node_type
        return per_node, kind

    request.reset_state()
    infer(list(range(10, 42)), 0)
    step_ms: list[float] = []
    for step in range(steps):
        step_ms.append(infer([100 + step], 32 + step) * 1e3)
        if step == WARMUP - 1:
            before, _ = counters()
    after, kind_of = counters()
    measured = steps - WARMUP
    per_node = {name: (after[name] - before.get(name, 0.0)) / measured for name in after}
    kinds: collections.Counter = collections.Counter()
    counts: collections.Counter = collections.Counter()
    projections: collections.Counter = collections.Counter()
    proj_bytes: collections.Counter = collections.Counter()
    for name, us in per_node.items():
        if us <= 0:
            continue
        kinds[kind_of[name]] += us
        counts[kind_of[name]] += 1
        if kind_of[name].startswith("FullyConnected"):
            projections[projection(name)] += us
            proj_bytes[projection(name)] += weights.get(name, 0)
    return {
        "model": folder.name,
        "step_ms": statistics.median(step_ms[WARMUP:]),
        "counted_ms": sum(kinds.values()) / 1e3,
        "kinds": {k: {"ms": v / 1e3, "nodes": counts[k]} for k, v in kinds.most_common()},
        "projections": {k: {"ms": v / 1e3, "weight_mb": proj_bytes[k] / 1e6} for k, v in projections.most_common()},
    }


def markdown(reports: list[dict], command: str) -> str:
    lines = [f"# Where a decode step's time goes\n\n`{command}`\n"]
    for r in reports:
        counted = r["counted_ms"]
        lines += [
            f"## {r['model']}\n",
            f"Step time with the profiler on: {r['step_ms']:.1f} ms; node counters sum to {counted:.1f} ms per step.\n",
            "| node kind | ms per step | share | nodes |",
            "|---|---:|---:|---:|",
        ]
        lines += [
            f"| {k} | {v['ms']:.2f} | {v['ms'] / counted:.0%} | {v['nodes']} |"
            for k, v in r["kinds"].items()
            if v["ms"] / counted >= 0.005
        ]
        lines += ["", "| projection | ms per step | weights MB | GB/s |", "|---|---:|---:|---:|"]
        lines += [
            f"| {k} | {v['ms']:.2f} | {v['weight_mb']:.1f} | {v['weight_mb'] / v['ms']:.1f} |"
            for k, v in r["projections"].items()
        ]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "profile_step")
    args = parser.parse_args()
    if args.steps <= WARMUP:
        parser.error(f"--steps must be above the {WARMUP} warm-up steps")
    reports = [profile(folder, args.steps) for folder in args.folders]
    command = "python benchmarks/profile_step.py " + " ".join(
        a if not a.startswith("/") else Path(a).name for a in sys.argv[1:]
    )
    text = markdown(reports, command)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps(reports, indent=1))


if __name__ == "__main__":
    main()
