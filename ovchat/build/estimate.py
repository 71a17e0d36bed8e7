"""How much memory and time an export will take, known before it starts, and whether this machine has it.

A model of where an export's memory goes, fitted to measured exports (benchmarks/export_memory.py;
the table and the fit are in docs/quality.md, "What an export costs"):
- BASE: the converter's Python with torch, transformers, optimum-intel and NNCF, and ovchat's own process;
- tracing the torch model into OpenVINO holds a graph per decoder layer (PER_LAYER);
- the float model at the source's precision (bf16 as the hub ships it: 2 bytes a parameter; a GGUF is
  dequantised to float32: 4) and what conversion and compression add (DATA_FREE_EXTRA);
- a calibrated export (AWQ, scale estimation) then runs the uncompressed IR through OpenVINO to collect
  activation statistics: the IR's 16-bit weights plus NNCF's compiled float32 copy (it forces f32 on
  every CPU), CALIBRATED_PER_PARAM in all, which is why it needs the most.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from ..errors import OvchatError
from .recipe import SAMPLE_RECIPE, Recipe

GB = 1e9
BASE_BYTES = 0.9e9
PER_LAYER_BYTES = 0.05e9
DATA_FREE_EXTRA = 0.36  # bytes a parameter over the source's own float copy
CALIBRATED_PER_PARAM = 4.9  # the 16-bit IR and NNCF's float32 compiled copy, less what they share
CALIBRATED_BYTES = 0.5e9  # statistics and the calibration samples' activations
GGUF_PARENT_BYTES = 0.85e9  # ovchat's process after dequantising a GGUF with transformers
# Seconds on 2 cores: a fixed part (imports, tokenizers, self-check) and per billion parameters.
SECONDS_BASE = 45.0
SECONDS_PER_BPARAM = {"data-free": 22.0, "calibrated-avx2": 620.0, "calibrated-avx512": 415.0, "gguf": 180.0}
WARN_SHARE = 0.85  # above this share of the available memory an export may push the machine into swap
_DTYPE_BYTES = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2}


@dataclass(frozen=True)
class Cost:
    parameters: int
    source_bytes_per_param: int  # 2 for a bf16/f16 source, 4 for float32 (a GGUF is dequantised to float32)
    peak_bytes: float
    seconds: float

    def describe(self) -> str:
        minutes = self.seconds / 60
        when = f"about {minutes:.0f} min" if minutes >= 1.5 else "about a minute"
        return f"about {self.peak_bytes / GB:.1f} GB of memory at its peak and {when} on 2 cores"


def _safetensors_parameters(path: Path) -> tuple[int, int]:
    with open(path, "rb") as fh:
        (size,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(size))
    count, widest = 0, 0
    for name, tensor in header.items():
        if name == "__metadata__":
            continue
        n = 1
        for dim in tensor["shape"]:
            n *= dim
        count += n
        if tensor["dtype"].startswith(("F", "BF")):
            widest = max(widest, _DTYPE_BYTES.get(tensor["dtype"], 4))
    return count, widest


def _gguf_parameters(path: Path) -> int:
    from gguf import GGUFReader

    return sum(int(t.n_elements) for t in GGUFReader(path).tensors)


def parameters(source: Path) -> tuple[int, int]:
    """(parameter count, bytes per float parameter in the converter) of a Hugging Face folder or a GGUF file."""
    if source.is_file():
        return _gguf_parameters(source), 4  # dequantised to float32 (ovchat.build.gguf)
    files = sorted(source.glob("*.safetensors"))
    if files:
        counts = [_safetensors_parameters(f) for f in files]
        return sum(c for c, _ in counts), max(w for _, w in counts) or 4
    # PyTorch .bin checkpoints: no header to read; their size over the declared dtype
    width = 2 if "16" in str(_config(source).get("torch_dtype") or _config(source).get("dtype") or "") else 4
    size = sum(f.stat().st_size for f in source.glob("*.bin"))
    return size // width, width


def _config(folder: Path) -> dict:
    try:
        return json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return {}


def layers(source: Path) -> int:
    """Decoder layers (config.json, or the GGUF's block_count); 32 where neither says."""
    if source.is_file():
        from gguf import GGUFReader

        for name, field in GGUFReader(source).fields.items():
            if name.endswith(".block_count"):
                return int(field.parts[field.data[0]][0])
        return 32
    config = _config(source)
    config = config.get("text_config", config)
    return int(config.get("num_hidden_layers") or config.get("n_layer") or config.get("num_layers") or 32)


def estimate(source: Path, recipe: Recipe) -> Cost:
    """Peak memory and wall time of exporting `source` (a Hugging Face folder or a GGUF file) with `recipe`."""
    from ..precision import cpu_info

    count, width = parameters(source)
    billions = count / 1e9
    peak = BASE_BYTES + PER_LAYER_BYTES * layers(source) + (width + DATA_FREE_EXTRA) * count
    seconds = SECONDS_BASE + SECONDS_PER_BPARAM["data-free"] * billions
    if recipe.data_aware:
        peak = max(peak, BASE_BYTES + PER_LAYER_BYTES * layers(source) + CALIBRATED_PER_PARAM * count
                   + CALIBRATED_BYTES)
        kind = "calibrated-avx512" if "avx512f" in cpu_info()[1] else "calibrated-avx2"
        seconds += SECONDS_PER_BPARAM[kind] * billions
    if source.is_file():  # a GGUF: dequantised in ovchat's own process first, which keeps its pages
        peak = max(peak + GGUF_PARENT_BYTES, GGUF_PARENT_BYTES + BASE_BYTES + 4.5 * count)
        seconds += SECONDS_PER_BPARAM["gguf"] * billions
    return Cost(count, width, peak, seconds)


def available_bytes() -> int:
    """Memory this process can still use: MemAvailable, or its container's (cgroup) limit if tighter."""
    available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except OSError:
        pass
    room = _cgroup_room()
    return available if room is None else min(available, room)


def _cgroup_room() -> int | None:
    """The tightest memory limit of this process's cgroup and its parents, less what they use (cgroup v2 or v1)."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    rooms = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2: limit memory.max, use memory.current
            base, names = Path("/sys/fs/cgroup"), ("memory.max", "memory.current", "inactive_file")
        elif "memory" in controllers.split(","):  # v1
            base, names = Path("/sys/fs/cgroup/memory"), ("memory.limit_in_bytes", "memory.usage_in_bytes",
                                                          "total_inactive_file")
        else:
            continue
        folder = base / path.lstrip("/")
        while True:
            rooms.append(_room(folder, *names))
            if folder == base or base not in folder.parents:
                break
            folder = folder.parent
    rooms = [r for r in rooms if r is not None]
    return min(rooms) if rooms else None


def _room(folder: Path, limit_name: str, usage_name: str, cache_name: str) -> int | None:
    try:
        limit = (folder / limit_name).read_text().strip()
        if limit == "max" or int(limit) >= 1 << 60:  # no limit ("max", or v1's page-rounded 2**63)
            return None
        used = int((folder / usage_name).read_text())
        for line in (folder / "memory.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == cache_name:  # page cache the kernel drops before it kills anyone
                used -= int(value)
        return int(limit) - max(used, 0)
    except (OSError, ValueError):
        return None


def check(source: Path, recipe: Recipe, name: str, log, available: int | None = None) -> Cost:
    """Say what the export will take; refuse, saying what to do instead, when it cannot fit in memory."""
    cost = estimate(source, recipe)
    available = available_bytes() if available is None else available
    if cost.peak_bytes > available:
        raise OvchatError(refusal(source, recipe, name, cost, available))
    log(f"this export ({recipe.tag}, {_count(cost.parameters)} parameters) needs {cost.describe()}; "
        f"{available / GB:.1f} GB available")
    if cost.peak_bytes > WARN_SHARE * available:
        log("warning: that is close to all the memory available: close other programs, or the export may swap")
    return cost


def _count(parameters: int) -> str:
    return f"{parameters / 1e9:.2f} B" if parameters >= 1e9 else f"{parameters / 1e6:.0f} M"


def refusal(source: Path, recipe: Recipe, name: str, cost: Cost, available: int) -> str:
    need = cost.peak_bytes / GB
    text = (
        f"exporting {name} with {recipe.tag} needs about {need:.1f} GB of memory at its peak "
        f"({_count(cost.parameters)} parameters), and {available / GB:.1f} GB is available. "
    )
    ways = []
    if recipe.data_aware:
        plain = estimate(source, SAMPLE_RECIPE)
        if plain.peak_bytes <= available:
            ways.append(
                f"export without calibration (--no-awq --no-scale-estimation, about {plain.peak_bytes / GB:.1f} GB; "
                "less accurate, see docs/quality.md)"
            )
    ways += ["close other programs", "use a machine with more memory"]
    return text + "To export it: " + ", or ".join(ways) + "; --skip-memory-check exports anyway (it may be killed)."
