"""Which precisions a device computes and caches in: the one place that decides, for every path.

OpenVINO's CPU plugin picks by itself: bf16 inference where the CPU has AVX-512 BF16 (Intel Xeon
since Cooper Lake), f32 elsewhere (AMD EPYC with AVX2); a u8 KV cache; int8 activations for int4 and
int8 weights ("dynamic quantization", group 32) where the CPU has VNNI. Those choices change answers
and speed, and some combinations do not load at all (the continuous-batching pipeline needs the KV
cache in the inference precision, f16 or u8). So ovchat states them instead: `choose()` returns the
`Precision` a path runs with, from what the device reports, the path's purpose and the user's
overrides, and refuses a combination that cannot work with a message that says what to use.

Purposes (docs/speed.md has the measurements behind each default):
- "speed": generate, chat and bench. f32 inference, a u8 KV cache, int8 activations where the CPU
  has VNNI: on an Intel Xeon 1.5x the decode of OpenVINO's own bf16, elsewhere within noise of the
  other settings, and half their prefill time where VNNI runs the int8 activations.
- "batch-invariant": the server. The same greedy answer whatever else is in the batch: the KV cache
  in the inference precision and no int8 activations (both make a token depend on its neighbours);
  bf16 where the CPU has AMX (as fast to decode as f32 there, three times faster to read a prompt),
  f32 elsewhere: with AVX-512 BF16 but no AMX (AMD EPYC Zen 4) bf16 answers changed with the batch.
- "reference": eval and the export check, which are measuring instruments: f32 everywhere, so a
  score means the same on every CPU.
"""

from __future__ import annotations

import functools
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import OvchatError

INFERENCE_PRECISIONS = ("f32", "bf16", "f16")
KV_CACHE_PRECISIONS = ("f32", "bf16", "f16", "u8")
PURPOSES = ("speed", "batch-invariant", "reference")
PRECISION_ENV = "OVCHAT_PRECISION"  # the inference precision when no flag or property says
# What OpenVINO calls each precision when it reports one back.
_OV_NAMES = {"f32": "f32", "float32": "f32", "bf16": "bf16", "bfloat16": "bf16", "f16": "f16", "float16": "f16",
             "u8": "u8", "uint8_t": "u8", "uint8": "u8"}
# The capability a device reports for each inference precision.
_CAPABILITY = {"f32": "FP32", "bf16": "BF16", "f16": "FP16"}
# CPU flags behind OpenVINO's kernel choices, as /proc/cpuinfo spells them.
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8", "amx_tile")
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
DYNAMIC_QUANTIZATION_GROUP = 32  # OpenVINO's CPU default, where VNNI makes it available


@dataclass(frozen=True)
class Precision:
    """How a model runs: inference precision, KV-cache precision, int8 activations (group size, 0 = off)."""

    inference: str
    kv_cache: str
    dynamic_quantization: int = 0

    def properties(self) -> dict[str, str]:
        """The OpenVINO properties that make a compiled model run with this precision."""
        return {
            "INFERENCE_PRECISION_HINT": self.inference,
            "KV_CACHE_PRECISION": self.kv_cache,
            "DYNAMIC_QUANTIZATION_GROUP_SIZE": str(self.dynamic_quantization),
        }

    @property
    def tag(self) -> str:
        """A short name, e.g. for the compiled-model cache folder: f32-kvu8-dq32."""
        return f"{self.inference}-kv{self.kv_cache}-dq{self.dynamic_quantization}"

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        activations = f"int8 activations (group {self.dynamic_quantization})" if self.dynamic_quantization else ""
        return ", ".join(p for p in (f"{self.inference} inference", f"{self.kv_cache} KV cache", activations) if p)


@functools.cache
def cpu_info() -> tuple[str, frozenset[str]]:
    """This machine's CPU model name and flags (empty where /proc/cpuinfo is not there)."""
    import platform

    name, flags = platform.processor() or platform.machine(), frozenset()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
            elif key.strip() == "flags":
                flags = frozenset(value.split())
                break  # every core says the same
    except OSError:
        pass
    return name, flags


def isa() -> list[str]:
    """The vector-ISA features that OpenVINO's kernels depend on, of those this CPU has."""
    flags = cpu_info()[1]
    return [f for f in ISA_FLAGS if f in flags]


@functools.cache
def capabilities(device: str) -> frozenset[str]:
    """What the device says it can compute in (OPTIMIZATION_CAPABILITIES: FP32, BF16, FP16, INT8, ...)."""
    import openvino as ov

    try:
        return frozenset(ov.Core().get_property(_base(device), "OPTIMIZATION_CAPABILITIES"))
    except RuntimeError:  # AUTO and friends report none: no precision is refused up front
        return frozenset()


def _base(device: str) -> str:
    return device.split(".")[0].split(":")[0].upper()


def _name(value, what: str, allowed: tuple[str, ...]) -> str:
    name = _OV_NAMES.get(str(value).strip().lower())
    if name not in allowed:
        raise OvchatError(f"{what} must be one of {', '.join(allowed)}, not {value!r}")
    return name


def _default_inference(device: str, purpose: str) -> str:
    caps = capabilities(device)
    if _base(device) != "CPU":
        return "f16" if purpose != "reference" and "FP16" in caps else "f32"  # GPUs, NPUs: f16 by default
    if purpose == "batch-invariant" and "BF16" in caps and has_amx():
        # Measured on an Intel Xeon with AMX (docs/speed.md): bf16 with a bf16 KV cache decodes as fast as f32
        # with an f32 one, the two batch-invariant pairs, and reads a 512-token prompt in a third of the time.
        return "bf16"
    # "speed": f32 with int8 activations decoded 1.5x bf16 on that Xeon (bf16 runs no int8 activations),
    # and is the only choice on AVX2; "reference": the same numbers on every CPU.
    return "f32"


def choose(
    device: str = "CPU",
    inference: str | None = None,
    kv_cache: str | None = None,
    *,
    purpose: str = "speed",
    config: dict | None = None,
) -> Precision:
    """The precision to run with on `device` for `purpose`; `inference`/`kv_cache` override the defaults.

    `config` (OpenVINO properties a caller passes through) may set INFERENCE_PRECISION_HINT,
    KV_CACHE_PRECISION or DYNAMIC_QUANTIZATION_GROUP_SIZE too; an explicit argument wins over it.
    Without either, the inference precision comes from OVCHAT_PRECISION (except for "reference", a
    measuring instrument's, which is f32 unless asked), then the purpose's default.
    """
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {PURPOSES}, not {purpose!r}")
    config = config or {}
    # OVCHAT_PRECISION is a user's preference for running a model, not for measuring one.
    from_env = os.environ.get(PRECISION_ENV) if purpose != "reference" else None
    asked = inference or config.get("INFERENCE_PRECISION_HINT") or from_env or None
    inference = _name(asked, "the precision", INFERENCE_PRECISIONS) if asked else _default_inference(device, purpose)
    caps, cpu = capabilities(device), _base(device) == "CPU"
    if cpu and inference == "f16":
        # OpenVINO's CPU f16 kernels overflow on these models' activations: empty answers (measured).
        raise OvchatError("f16 inference on the CPU gives empty answers; use bf16 (if the CPU has it) or f32")
    if caps and _CAPABILITY[inference] not in caps:
        raise OvchatError(
            f"{device} cannot infer in {inference} (OpenVINO reports {', '.join(sorted(caps))}); use f32"
            + (" (bf16 needs a CPU with AVX-512 BF16 or AMX)" if inference == "bf16" else "")
        )

    kv_asked = kv_cache or config.get("KV_CACHE_PRECISION")
    if kv_asked:
        kv_cache = _name(kv_asked, "the KV-cache precision", KV_CACHE_PRECISIONS)
    elif purpose == "speed":
        kv_cache = "u8"  # a quarter of f32's memory and reads, no measurable loss (docs/speed.md)
    else:
        kv_cache = inference  # the batch-invariant and the reference cache: no rounding beyond the inference's
    if kv_cache not in (inference, "f16", "u8"):
        # The continuous-batching pipeline refuses other pairs ("expect kvcache type ...") at load.
        raise OvchatError(
            f"a {kv_cache} KV cache does not go with {inference} inference; use {inference}, f16 or u8"
        )

    group = config.get("DYNAMIC_QUANTIZATION_GROUP_SIZE")
    if group is not None:
        try:
            dynamic = int(group)
        except (TypeError, ValueError):
            raise OvchatError(f"DYNAMIC_QUANTIZATION_GROUP_SIZE must be a whole number, not {group!r}") from None
    elif purpose == "speed" and cpu and has_vnni():
        dynamic = DYNAMIC_QUANTIZATION_GROUP
    else:
        dynamic = 0
    return Precision(inference, kv_cache, dynamic)


def not_batch_invariant(chosen: Precision) -> str | None:
    """Why answers may change with what else is in the batch under `chosen` on this CPU; None if they do not."""
    if chosen.dynamic_quantization:
        return "int8 activations are quantized per group across the batch"
    if chosen.kv_cache != chosen.inference:
        return f"a {chosen.kv_cache} KV cache rounds what {chosen.inference} inference stores"
    if chosen.inference == "bf16" and not has_amx():
        return "bf16 without AMX changed answers with the batch (measured on AMD EPYC Zen 4); f32 does not"
    return None


def has_amx() -> bool:
    """Whether this CPU has AMX tiles for bf16 matrix products (Intel Xeon since Sapphire Rapids)."""
    return "amx_bf16" in cpu_info()[1]


def has_vnni() -> bool:
    """Whether this CPU has the int8 dot products OpenVINO's int8-activation kernels need."""
    return any(f in cpu_info()[1] for f in VNNI_FLAGS)


def reported(compiled) -> dict:
    """The precisions a compiled model actually runs with, as OpenVINO reports them."""
    out: dict = {}
    for name, key in (("inference", "INFERENCE_PRECISION_HINT"), ("kv_cache", "KV_CACHE_PRECISION")):
        value = compiled.get_property(key)
        text = value.get_type_name() if hasattr(value, "get_type_name") else str(value)
        out[name] = _OV_NAMES.get(text, text)
    try:
        out["dynamic_quantization"] = int(compiled.get_property("DYNAMIC_QUANTIZATION_GROUP_SIZE"))
    except RuntimeError:  # a device without int8 activations may not know the property
        out["dynamic_quantization"] = 0
    return out
