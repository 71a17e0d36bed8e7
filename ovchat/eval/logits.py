"""Next-token logits of a model for given token ids: an exported OpenVINO folder, or the original model.

Both scorers are callables: `scorer(ids)` returns the float32 logits of every position, row i
predicting token i+1, computed from an empty context on each call. `sliding_logits` walks a long
token sequence in overlapping windows and yields the rows that predict the tokens each window scores.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .. import catalog, manifest, runtime
from ..config import DEFAULT_CONTEXT_LENGTH, DEFAULT_DEVICE
from ..errors import OvchatError, describe, print_nothing
from ..precision import choose as choose_precision
from ..precision import reported as reported_precision


def windows(n_tokens: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """(start, end, first) for each window: run ids[start:end] and score the tokens first..end-1.

    As in Hugging Face's perplexity guide, windows start every `stride` tokens and each token is
    scored once, in the first window that reaches it, so every scored token after the first window
    sees at least `window - stride` tokens of context. Token 0 has no context and is never scored.
    """
    if window < 2 or not 0 < stride < window:
        raise OvchatError(f"need a window of at least 2 tokens and 0 < stride < window, not {window} and {stride}")
    spans, scored, start = [], 1, 0
    while scored < n_tokens:
        end = min(start + window, n_tokens)
        spans.append((start, end, scored))
        scored, start = end, start + stride
    return spans


def sliding_logits(scorer, ids: Sequence[int], window: int, stride: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """Yield (first, end, logits) per window: logits[k] is the distribution for token ids[first + k]."""
    for start, end, first in windows(len(ids), window, stride):
        logits = scorer(ids[start:end])
        yield first, end, logits[first - 1 - start : end - 1 - start]


def step_inputs(ids: Sequence[int], offset: int, names: set[str]) -> dict[str, np.ndarray]:
    """A stateful export's inputs for `ids` after `offset` tokens already in its KV cache (those it has)."""
    n = len(ids)
    feed = {
        "input_ids": np.asarray([ids], dtype=np.int64),
        "attention_mask": np.ones((1, offset + n), dtype=np.int64),
        "position_ids": np.arange(offset, offset + n, dtype=np.int64)[None],
        "beam_idx": np.zeros(1, dtype=np.int32),
    }
    return {k: v for k, v in feed.items() if k in names}


class OpenVINOLogits:
    """An exported folder's openvino_model.xml, compiled with the runtime's settings (what users get).

    The export keeps the logits of every position (optimum-intel does not cut them; OpenVINO GenAI
    slices to the last one at run time), so one inference gives a whole window; a window is one
    prefill, so the KV-cache precision does not enter the scores. `stepwise=True` feeds one token at a
    time through the KV cache instead: slower, for checking that the two agree.

    It is a measuring instrument: it computes in f32 with an f32 KV cache and no int8 activations on
    every CPU (the "reference" precision) unless `precision` (f32, bf16, f16) or `purpose` (one of
    ovchat.precision.PURPOSES) says otherwise.
    """

    kind = "openvino"

    def __init__(
        self,
        folder: Path,
        device: str = DEFAULT_DEVICE,
        config: dict | None = None,
        stepwise=False,
        precision: str | None = None,
        purpose: str = "reference",
    ):
        import openvino as ov

        self.folder, self.stepwise = Path(folder), stepwise
        chosen = choose_precision(device, precision, purpose=purpose, config=config)
        try:
            compiled = ov.Core().compile_model(
                self.folder / "openvino_model.xml", device, runtime.runtime_properties(config, None, chosen)
            )
        except RuntimeError as exc:
            raise OvchatError(f"OpenVINO could not compile {self.folder} on {device}: {describe(exc)}") from None
        self._inputs = {i.get_any_name() for i in compiled.inputs}
        self._request = compiled.create_infer_request()
        self.vocab_size = compiled.output("logits").get_partial_shape()[-1].get_length()
        self.context_length = runtime.context_length(self.folder)
        self.precision = reported_precision(compiled)

    def _infer(self, ids: Sequence[int], offset: int) -> np.ndarray:
        out = self._request.infer(step_inputs(ids, offset, self._inputs))
        return out["logits"][0]

    def __call__(self, ids: Sequence[int]) -> np.ndarray:
        self._request.reset_state()  # every call starts from an empty KV cache
        if self.stepwise:
            return np.stack([self._infer([token], i)[-1] for i, token in enumerate(ids)])
        logits = self._infer(ids, 0)
        if logits.shape[0] != len(ids):
            raise OvchatError(
                f"{self.folder} returns logits for {logits.shape[0]} of {len(ids)} positions; "
                "scoring needs every position (an optimum-intel export keeps them): re-export it with `ovchat export`"
            )
        return logits.copy()  # the request reuses its output buffer


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers without progress bars and load reports: ovchat prints its own progress."""
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _need_torch(purpose: str) -> None:
    missing = [m for m in ("torch", "transformers") if importlib.util.find_spec(m) is None]
    if missing:
        raise OvchatError(
            f"{purpose} needs {' and '.join(missing)}: pip install 'ovchat[eval]' "
            "(or pass an exported OpenVINO folder as --reference)"
        )


class TorchLogits:
    """The original model in transformers, float32 on the CPU: the reference a quantized model is held to."""

    kind = "transformers-fp32"

    def __init__(self, folder: Path):
        _need_torch("the reference model")
        import torch
        from transformers import AutoModelForCausalLM

        self.folder = Path(folder)
        try:
            with quiet_transformers():
                self.model = AutoModelForCausalLM.from_pretrained(str(self.folder), dtype=torch.float32).eval()
        except (OSError, ValueError) as exc:
            raise OvchatError(f"transformers could not load the reference {self.folder}: {describe(exc)}") from None
        self.vocab_size = self.model.get_output_embeddings().weight.shape[0]
        self.context_length = getattr(self.model.config, "max_position_embeddings", DEFAULT_CONTEXT_LENGTH)
        self.precision = {"inference": "f32", "kv_cache": "f32", "dynamic_quantization": 0}

    def __call__(self, ids: Sequence[int]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.model(torch.tensor([list(ids)])).logits[0].float().numpy()

    def generate(self, prompt_ids: Sequence[int], max_new_tokens: int, stop_ids: set[int]) -> list[int]:
        """Greedy new token ids after `prompt_ids`, without the stop token that ended them."""
        import torch
        from transformers import GenerationConfig

        config = GenerationConfig(
            max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=sorted(stop_ids), pad_token_id=min(stop_ids)
        )
        ids = torch.tensor([list(prompt_ids)])
        with torch.inference_mode():
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config)
        new = out[0, len(prompt_ids) :].tolist()
        return new[:-1] if new and new[-1] in stop_ids else new


def _gguf_reference(gguf_file: Path, source: catalog.Source, log) -> Path:
    # The GGUF's weights dequantised to a float32 Hugging Face folder, made once per source file.
    digest = hashlib.sha256(source.identity.encode()).hexdigest()[:10]
    target = catalog.models_home() / "references" / f"{source.name}-fp32-{digest}"
    if (target / "config.json").is_file():
        return target
    from ..build import gguf

    _need_torch("the reference model")
    log(f"converting {gguf_file.name} to a float32 Hugging Face folder for the reference (once, into {target})")
    partial = target.with_name(f".{target.name}.{os.getpid()}")
    try:
        gguf.gguf_to_hf(gguf_file, partial)
        try:
            partial.rename(target)  # whole or absent
        except OSError:
            if not (target / "config.json").is_file():
                raise
    except OSError as exc:
        raise OvchatError(f"could not write the reference model to {target}: {describe(exc)}") from None
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target


def reference_source(model_folder: Path, reference: str | None) -> catalog.Source:
    """What a model is compared to: `reference` if given, else the source its export was made from."""
    if reference is not None:
        return catalog.resolve(reference)
    spec = (manifest.read(model_folder) or {}).get("source", {}).get("spec")
    if not spec:
        raise OvchatError(
            f"{model_folder} does not record its source (no ovchat manifest): pass the original model with "
            "--reference (a Hugging Face folder, a .gguf file, an alias or an exported folder)"
        )
    source = catalog.resolve(spec)
    if source.kind == "exported":
        raise OvchatError(
            f"{model_folder} was made from an exported folder ({spec}): pass the original with --reference"
        )
    return source


def open_reference(
    source: catalog.Source, device: str = DEFAULT_DEVICE, log=print_nothing, precision: str | None = None
):
    """A scorer for a reference source: an exported folder runs in OpenVINO, anything else in transformers fp32."""
    if source.kind == "exported":
        return OpenVINOLogits(Path(source.location), device, precision=precision)
    _need_torch("the reference model")
    local = catalog.materialize(source)
    folder = _gguf_reference(local, source, log) if local.is_file() else local
    log(f"loading the reference {folder} (transformers, float32)")
    return TorchLogits(folder)
