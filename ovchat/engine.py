"""The model handle: load an exported folder with OpenVINO GenAI and stream generations from it.

Runtime only: this module imports OpenVINO's packages, never torch or optimum.
"""

from __future__ import annotations

import functools
import json
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

from . import catalog, manifest
from .errors import OvchatError, describe, print_nothing
from .precision import Precision
from .precision import choose as choose_precision

if TYPE_CHECKING:
    from .export import Recipe

DEFAULT_DEVICE = "CPU"
DEFAULT_MAX_NEW_TOKENS = 1024
DEFAULT_CONTEXT_LENGTH = 2048  # when config.json does not say
# The seed's runtime config: lowest latency for one user.
LATENCY_CONFIG = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1"}
# End-of-turn markers of common chat formats; those present in a vocabulary stop generation.
END_OF_TURN_TOKENS = ("<|end|>", "<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|eom_id|>")

Message = dict[str, str]


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens. temperature 0 is greedy; top_k 0 means no limit."""

    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        checks = [
            ("max_new_tokens", isinstance(self.max_new_tokens, int) and self.max_new_tokens > 0, "a positive integer"),
            ("temperature", 0 <= self.temperature <= 2, "between 0 and 2"),
            ("top_p", 0 < self.top_p <= 1, "in (0, 1]"),
            ("top_k", isinstance(self.top_k, int) and self.top_k >= 0, "0 (no limit) or a positive integer"),
            ("repetition_penalty", self.repetition_penalty > 0, "positive"),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise OvchatError(f"{name} must be {rule}, not {getattr(self, name)!r}")


@dataclass(frozen=True)
class GenerationResponse:
    """One piece of a streamed answer; the last one has a finish_reason and the final timings."""

    text: str
    token_count: int
    prompt_tokens: int
    finish_reason: str | None = None  # "stop" (end of turn) | "length" (token budget or context)
    time_to_first_token: float | None = None  # seconds, tokenization and prefill included
    tokens_per_second: float | None = None  # decode rate after the first token
    cached_tokens: int = 0  # prompt tokens shared with the previous call, whose KV is reused (not re-read)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):  # noqa: B905 (lengths differ by design)
        if x != y:
            break
        n += 1
    return n


def _join(worker: threading.Thread) -> None:
    # A second Ctrl-C must not leave the pipeline generating behind our back: wait for the worker
    # (it stops at the next token), then let the interrupt through.
    interrupted = False
    while worker.is_alive():
        try:
            worker.join()
        except KeyboardInterrupt:
            interrupted = True
    if interrupted:
        raise KeyboardInterrupt


def check_device(device: str) -> None:
    import openvino as ov

    available = ov.Core().available_devices
    base = device.split(".")[0].split(":")[0]
    if device in available or base in available or base in ("AUTO", "HETERO", "MULTI"):
        return
    raise OvchatError(f"unknown device '{device}': this machine has {', '.join(available)} (or AUTO)")


def read_json(path: Path) -> dict:
    """A JSON object from a file of the exported folder, or {} when it is missing or unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def model_config(folder: Path) -> dict:
    """The exported folder's config.json (architecture sizes), or {}."""
    return read_json(folder / "config.json")


def context_length(folder: Path) -> int:
    config = model_config(folder)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        if isinstance(config.get(key), int):
            return config[key]
    return DEFAULT_CONTEXT_LENGTH


def encode(tokenizer, text: str, add_special_tokens: bool = True) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=add_special_tokens).input_ids.data[0].tolist()


def stop_token_ids(tokenizer, configured: Sequence[int] = ()) -> set[int]:
    """The configured stop ids, eos, and the end-of-turn markers this vocabulary has as single tokens."""
    stops = set(configured) | {tokenizer.get_eos_token_id()}
    for marker in END_OF_TURN_TOKENS:
        ids = encode(tokenizer, marker, add_special_tokens=False)
        if len(ids) == 1:  # a single id means the vocabulary has it as a special token
            stops.add(ids[0])
    return {t for t in stops if t >= 0}


PROMPT_LOOKUP_TOKENS = 5
PROMPT_LOOKUP_NGRAM = 3


def render(tokenizer, name: str, messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
    """The prompt text the model sees: the messages in the model's own chat template."""
    try:
        return tokenizer.apply_chat_template(list(messages), add_generation_prompt=add_generation_prompt)
    except RuntimeError as exc:  # no template, or the template itself refuses (e.g. no system role)
        raise OvchatError(f"{name} cannot format these messages ({describe(exc)}); use raw mode") from None


@functools.cache
def _streamer_class():
    import openvino_genai as ov_genai

    running, stopped = ov_genai.StreamingStatus.RUNNING, ov_genai.StreamingStatus.STOP

    class QueueStreamer(ov_genai.StreamerBase):
        """Bridges OpenVINO GenAI's callback streamer to a queue read by a generator (the one place)."""

        def __init__(self, tokenizer, events: queue.Queue, stop: threading.Event):
            super().__init__()
            self.events, self.stop = events, stop

            # A closure, not a bound method: a callback held by C++ that points back at this object
            # would form a cycle the garbage collector cannot see, leaking every streamer.
            ending = self.ending = threading.Event()

            def on_text(piece: str):
                # What end() flushes may be the first bytes of a character cut off by the token
                # budget: drop that half character rather than show a replacement mark.
                events.put(("text", piece.rstrip("\ufffd") if ending.is_set() else piece, None))
                return stopped if stop.is_set() else running

            # TextStreamer holds back incomplete UTF-8 and decodes without special tokens.
            self.text = ov_genai.TextStreamer(tokenizer, on_text)

        def write(self, token):
            tokens = token if isinstance(token, list) else [token]
            self.events.put(("tokens", tokens, time.perf_counter()))
            self.text.write(token)
            return stopped if self.stop.is_set() else running

        def end(self) -> None:
            self.ending.set()
            self.text.end()

    return QueueStreamer


class Model:
    """A loaded model. Get one with `ovchat.load()`; generate with `generate` or `stream_generate`."""

    def __init__(
        self,
        path: Path,
        device: str,
        pipeline,
        info: dict | None,
        prompt_lookup: bool = False,
        precision: Precision | None = None,
    ):
        self.path, self.device, self.pipeline, self.precision = path, device, pipeline, precision
        self.prompt_lookup = prompt_lookup
        self.manifest = info
        self.name = model_name(path, info)
        self.context_length = context_length(path)
        self.tokenizer = pipeline.get_tokenizer()
        self.stop_token_ids = stop_token_ids(self.tokenizer, pipeline.get_generation_config().stop_token_ids)
        self._lock = threading.Lock()
        self._kv_ids: list[int] = []  # the tokens of the last call (prompt + answer), whose KV the pipeline keeps

    def __repr__(self) -> str:
        return f"Model({self.name!r}, path={str(self.path)!r}, device={self.device!r})"

    def render(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
        """The prompt text the model sees: the messages in the model's own chat template."""
        return render(self.tokenizer, self.name, messages, add_generation_prompt)

    def count_tokens(self, text: str, add_special_tokens: bool = True) -> int:
        return len(self.encode(text, add_special_tokens))

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return encode(self.tokenizer, text, add_special_tokens)

    def _prepare(self, prompt: str | Sequence[Message], system: str | None, raw: bool):
        """What to hand the pipeline, and the token ids it will see."""
        if raw:
            if not isinstance(prompt, str):
                raise OvchatError("raw mode takes a prompt string, not a list of messages")
            return prompt, self.encode(prompt)
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        if system is not None:
            messages = [{"role": "system", "content": system}] + [m for m in messages if m.get("role") != "system"]
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise OvchatError(f"message {i} must be a dict with string 'role' and 'content', not {m!r}")
        import openvino_genai as ov_genai

        messages = [{"role": m["role"], "content": m["content"]} for m in messages]
        # A ChatHistory makes the pipeline keep its KV cache between calls and process only the part
        # of the templated conversation that differs from what it already holds. The template adds
        # any special tokens itself, as in Hugging Face's apply_chat_template.
        return ov_genai.ChatHistory(messages), self.encode(self.render(messages), add_special_tokens=False)

    def _config(self, params: SamplingParams, max_new_tokens: int, chat: bool):
        import openvino_genai as ov_genai

        # The pipeline applies the chat template to a ChatHistory itself (the same template as render).
        config = ov_genai.GenerationConfig(max_new_tokens=max_new_tokens, apply_chat_template=chat)
        config.stop_token_ids = self.stop_token_ids
        config.repetition_penalty = params.repetition_penalty
        if self.prompt_lookup:
            # Up to 5 drafted tokens per step, found by matching the last 3 tokens earlier in the text
            # (the settings of OpenVINO GenAI's prompt-lookup sample).
            config.num_assistant_tokens = PROMPT_LOOKUP_TOKENS
            config.max_ngram_size = PROMPT_LOOKUP_NGRAM
        if params.temperature > 0:
            config.do_sample = True
            config.temperature = params.temperature
            config.top_p = params.top_p
            if params.top_k:
                config.top_k = params.top_k
            if params.seed is not None:
                config.rng_seed = params.seed
        return config

    def stream_generate(
        self,
        prompt: str | Sequence[Message],
        *,
        system: str | None = None,
        raw: bool = False,
        **sampling,
    ) -> Iterator[GenerationResponse]:
        """Yield the answer piece by piece. `prompt` is a user message, a list of messages, or (raw) text.

        Keyword arguments are SamplingParams fields (max_new_tokens, temperature, top_p, top_k,
        repetition_penalty, seed). Closing the generator early stops generation at the next token.
        Successive calls with a growing list of messages reuse the KV cache: only new tokens are read.
        """
        unknown = set(sampling) - {f.name for f in fields(SamplingParams)}
        if unknown:
            raise TypeError(f"unknown sampling parameters: {', '.join(sorted(unknown))}")
        params = SamplingParams(**sampling)
        started = time.perf_counter()  # the wait a user sees includes templating and tokenizing
        inputs, ids = self._prepare(prompt, system, raw)
        room = self.context_length - len(ids)
        if room <= 0:
            raise OvchatError(
                f"the prompt has {len(ids)} tokens but the model's context is {self.context_length}; shorten it"
            )
        budget = min(params.max_new_tokens, room)
        if not self._lock.acquire(blocking=False):
            raise OvchatError(f"{self.name} is already generating; finish or close that stream first")
        try:
            config = self._config(params, budget, chat=not isinstance(inputs, str))
            yield from self._run(inputs, ids, config, budget, started)
        finally:
            self._lock.release()

    def _run(self, inputs, ids: list[int], config, budget: int, started: float) -> Iterator[GenerationResponse]:
        # The pipeline's prefix cache keeps the KV of earlier requests: the prompt's common prefix with
        # the previous call (prompt + answer) is not read again. With a growing conversation that is
        # everything but the new message.
        cached = _common_prefix(self._kv_ids, ids)
        events: queue.Queue = queue.Queue()
        stop = threading.Event()
        streamer = _streamer_class()(self.tokenizer, events, stop)

        def work() -> None:
            try:
                self.pipeline.generate(inputs, config, streamer)
                events.put(("done", None, None))
            except Exception as exc:  # re-raised in the consumer's thread
                events.put(("error", exc, None))

        first = last = None
        generated: list[int] = []
        failed = False
        worker = threading.Thread(target=work, name="ovchat-generate", daemon=True)
        worker.start()
        try:
            while True:
                kind, value, stamp = events.get()
                if kind == "tokens":
                    generated += value
                    first = first or stamp
                    last = stamp
                elif kind == "text":
                    yield GenerationResponse(value, len(generated), len(ids), cached_tokens=cached)
                elif kind == "error":
                    failed = True
                    raise OvchatError(f"generation failed: {value}") from value
                else:
                    break
        finally:
            stop.set()
            _join(worker)
            # A stopped answer stays in the pipeline's cache too: count its tokens for the next call.
            while not events.empty():
                kind, value, _ = events.get_nowait()
                generated += value if kind == "tokens" else []
            self._kv_ids = [] if failed else ids + generated
        count = len(generated)
        finish = "stop" if generated and generated[-1] in self.stop_token_ids or count < budget else "length"
        ttft = first - started if first else None
        rate = (count - 1) / (last - first) if count > 1 and last > first else None
        yield GenerationResponse("", count, len(ids), finish, ttft, rate, cached)

    def generate(self, prompt: str | Sequence[Message], **kwargs) -> str:
        """The whole answer as one string (see stream_generate for the arguments)."""
        return "".join(r.text for r in self.stream_generate(prompt, **kwargs))


def prepare(model: str, device: str, recipe: Recipe | None = None, log=print_nothing) -> tuple[Path, dict | None]:
    """Everything before compiling: the device exists, the model is exported, its files are whole."""
    from .export import ensure_exported  # light at import; exporting itself needs the extra

    check_device(device)
    path = ensure_exported(model, recipe, log=log)
    info = manifest.verify(path)
    if not (path / "openvino_tokenizer.xml").is_file():
        raise OvchatError(
            f"{path} has no openvino_tokenizer.xml (OpenVINO GenAI needs it): re-export it with `ovchat export`"
        )
    return path, info


def runtime_properties(config: dict | None, cache_dir: str | None, precision: Precision | None = None) -> dict:
    """The seed's latency config, the caller's additions, the precision (which wins: it was chosen with the
    caller's additions in view) and the compiled-model cache ("" turns it off)."""
    properties = {**LATENCY_CONFIG, **(config or {}), **(precision.properties() if precision else {})}
    cache = str(catalog.compile_cache_dir()) if cache_dir is None else cache_dir
    if cache:
        # One cache folder per precision: OpenVINO's cache does not key its blobs on the inference
        # precision, and serves (and runs) a bf16 blob to a later f32 request.
        properties["CACHE_DIR"] = str(Path(cache) / precision.tag) if precision else cache
    return properties


def model_name(path: Path, info: dict | None) -> str:
    return (info or {}).get("source", {}).get("spec") or path.name


def load(
    model: str = catalog.DEFAULT_MODEL,
    *,
    device: str = DEFAULT_DEVICE,
    cache_dir: str | None = None,
    config: dict | None = None,
    recipe: Recipe | None = None,
    prompt_lookup: bool = False,
    precision: str | None = None,
    kv_cache_precision: str | None = None,
    log: Callable[[str], None] = print_nothing,
) -> Model:
    """Load a model by alias, path, .gguf file, hub id or exported folder (exporting it once if needed).

    `config` adds OpenVINO properties to the seed's latency config; `cache_dir=""` turns off the
    compiled-model cache (default: under the models directory). `recipe` (an `ovchat.Recipe`) picks
    the export recipe when the model is not exported yet (default: ovchat's, `ovchat.Recipe()`).
    `prompt_lookup` drafts tokens by matching the last words against the prompt (OpenVINO GenAI's
    prompt-lookup decoding): the same answer, about twice as fast when it quotes or edits the prompt,
    about 15% slower when it does not (docs/speed.md).
    `precision` (f32, bf16, f16) and `kv_cache_precision` (f32, bf16, f16, u8) override the
    precisions ovchat picks for the device (`ovchat.precision.choose`; `model.precision` says which ran).
    """
    chosen = choose_precision(device, precision, kv_cache_precision, config=config)
    path, info = prepare(model, device, recipe, log)
    properties = runtime_properties(config, cache_dir, chosen)
    import openvino_genai as ov_genai

    try:
        extra = {"prompt_lookup": True} if prompt_lookup else {}
        pipeline = ov_genai.LLMPipeline(str(path), device, **extra, **properties)
    except RuntimeError as exc:
        raise OvchatError(f"OpenVINO could not load {path} on {device}: {describe(exc)}") from None
    return Model(path, device, pipeline, info, prompt_lookup, chosen)
