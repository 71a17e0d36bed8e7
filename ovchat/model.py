"""The model handle: an exported folder compiled by OpenVINO GenAI, streaming generations.

Runtime only: this module imports OpenVINO's packages, never torch or optimum.
"""

from __future__ import annotations

import dataclasses
import functools
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import runtime
from . import tools as tools_module
from .errors import OvchatError, describe
from .precision import Precision
from .runtime import Message
from .sampling import LoopGuard, SamplingParams, StopMatcher, generation_config
from .tool_formats import chat_template, detect
from .tools import StreamReader, Tool, ToolCall


@dataclass(frozen=True)
class GenerationResponse:
    """One piece of a streamed answer; the last one has a finish_reason and the final timings."""

    text: str
    token_count: int
    prompt_tokens: int
    finish_reason: str | None = None  # "stop" (end of turn, stop string) | "length" (token budget or context)
    time_to_first_token: float | None = None  # seconds, tokenization and prefill included
    tokens_per_second: float | None = None  # decode rate after the first token
    cached_tokens: int = 0  # prompt tokens shared with the previous call, whose KV is reused (not re-read)
    stopped_loop: bool = False  # the loop guard ended the answer: it had started repeating itself
    tool_calls: tuple[ToolCall, ...] = ()  # on the last piece, when the answer called tools (finish "tool_calls")


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
            try:
                self.text.write(token)
            except UnicodeDecodeError:
                # Bytes that are not UTF-8 (a sampled run of byte tokens no character is made of): shown
                # as one replacement mark. Let through, the error would abort the process from C++.
                self.events.put(("text", "\ufffd", None))
            return stopped if self.stop.is_set() else running

        def end(self) -> None:
            self.ending.set()
            try:
                self.text.end()
            except UnicodeDecodeError:
                pass  # the held-back tail is no character (half of one, cut by the budget): dropped, as above

    return QueueStreamer


@functools.cache
def _counting_streamer_class():
    import openvino_genai as ov_genai

    class CountingStreamer(ov_genai.StreamerBase):
        """Tells a callback how many tokens arrived; decodes nothing."""

        def __init__(self, on_tokens: Callable[[int], None]):
            super().__init__()
            self.on_tokens = on_tokens

        def write(self, token):
            self.on_tokens(len(token) if isinstance(token, list) else 1)
            return ov_genai.StreamingStatus.RUNNING

        def end(self) -> None:
            pass

    return CountingStreamer


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
        self.path, self.device, self._pipeline, self.precision = path, device, pipeline, precision
        self.prompt_lookup = prompt_lookup
        self.name = runtime.model_name(path, info)
        self.context_length = runtime.context_length(path)
        # A chat's sampling unless told otherwise (generate stays greedy), and where it comes from.
        self.chat_sampling, self.chat_sampling_source = runtime.recommended_sampling(path, info)
        self.tokenizer = runtime.use_folder_template(pipeline.get_tokenizer(), path)  # the pipeline's own
        configured = pipeline.get_generation_config().stop_token_ids
        self.stop_token_ids = runtime.stop_token_ids(self.tokenizer, configured)
        self.tool_format = detect(chat_template(path, self.tokenizer))  # None: ovchat's generic tool format
        self._lock = threading.Lock()
        self._kv_ids: list[int] = []  # the tokens of the last call (prompt + answer), whose KV the pipeline keeps

    def __repr__(self) -> str:
        return f"Model({self.name!r}, path={str(self.path)!r}, device={self.device!r})"

    def render(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
        """The prompt text the model sees: the messages in the model's own chat template."""
        return runtime.render(self.tokenizer, self.name, messages, add_generation_prompt)

    def count_tokens(self, text: str, add_special_tokens: bool = True) -> int:
        return len(self.encode(text, add_special_tokens))

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return runtime.encode(self.tokenizer, text, add_special_tokens)

    def _prepare(self, prompt: str | Sequence[Message], system: str | None, raw: bool, tools: list | None = None):
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

        if tools is None:  # a template with its own tool format also takes calls, results and the tools
            messages = [{"role": m["role"], "content": m["content"]} for m in messages]
        # A ChatHistory makes the pipeline keep its KV cache between calls and process only the part
        # of the templated conversation that differs from what it already holds. The template adds
        # any special tokens itself, as in Hugging Face's apply_chat_template.
        history = ov_genai.ChatHistory(messages)
        if tools is not None:
            history.set_tools(tools)
        prompt = runtime.render(self.tokenizer, self.name, messages, tools=tools)
        return history, self.encode(prompt, add_special_tokens=False)

    def stream_generate(
        self,
        prompt: str | Sequence[Message],
        *,
        system: str | None = None,
        raw: bool = False,
        sampling: SamplingParams | None = None,
        tools: Sequence[Tool | dict] | None = None,
        tool_choice: str = "auto",
        parallel_tool_calls: bool = True,
        **params,
    ) -> Iterator[GenerationResponse]:
        """Yield the answer piece by piece. `prompt` is a user message, a list of messages, or (raw) text.

        Sampling comes as a `SamplingParams` (`sampling=`) or as its fields by keyword (max_new_tokens,
        temperature, top_p, top_k, repetition_penalty, presence_penalty, frequency_penalty, seed, stop,
        json_schema). Closing the generator early stops generation at the next token. Successive calls
        with a growing list of messages reuse the KV cache: only new tokens are read.

        With `tools` (see ovchat.tools), the model may call them (`tool_choice` "auto"), must
        ("required", or a tool's name) or does not ("none"); calls are generated under their schemas
        and come on the last piece's `tool_calls`. Messages may carry OpenAI's `tool_calls` (an
        assistant's) and role "tool" results (with `tool_call_id`).
        """
        if sampling is not None and params:
            raise TypeError("pass sampling= or sampling keywords, not both")
        sampling = sampling or SamplingParams.of(**params)
        started = time.perf_counter()  # the wait a user sees includes templating and tokenizing
        plan = tools_module.plan_for(tools, tool_choice, parallel_tool_calls, sampling.json_schema, self.tool_format)
        if not raw:
            messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
            if system is not None:  # first, so the tools' instructions join it
                messages = [{"role": "system", "content": system}] + [m for m in messages if m.get("role") != "system"]
                system = None
            tools_module.check_history(messages)
            prompt = plan.prepare(messages)
        elif plan.active:
            raise OvchatError("tools need chat messages, not raw text")
        if plan.active:
            sampling = dataclasses.replace(sampling, **plan.constraint())
        inputs, ids = self._prepare(prompt, system, raw, plan.template_tools())
        room = self.context_length - len(ids)
        if room <= 0:
            raise OvchatError(
                f"the prompt has {len(ids)} tokens but the model's context is {self.context_length}; shorten it"
            )
        budget = min(sampling.max_new_tokens, room)
        if not self._lock.acquire(blocking=False):
            raise OvchatError(f"{self.name} is already generating; finish or close that stream first")
        try:
            # The pipeline applies the chat template to a ChatHistory itself (the same template as render).
            config = generation_config(
                sampling,
                self.stop_token_ids,
                max_new_tokens=budget,
                prompt_lookup=self.prompt_lookup,
                apply_chat_template=not isinstance(inputs, str),
            )
            guard = LoopGuard() if sampling.guards_loops else None
            pieces = self._run(inputs, ids, config, budget, started, StopMatcher(sampling.stop), guard)
            yield from _with_calls(pieces, StreamReader(plan)) if plan.active else pieces
        finally:
            self._lock.release()

    def _run(
        self,
        inputs,
        ids: list[int],
        config,
        budget: int,
        started: float,
        matcher: StopMatcher,
        guard: LoopGuard | None,
    ) -> Iterator[GenerationResponse]:
        # The pipeline's prefix cache keeps the KV of earlier requests: the prompt's common prefix with
        # the previous call (prompt + answer) is not read again. With a growing conversation that is
        # everything but the new message.
        cached = _common_prefix(self._kv_ids, ids)
        events: queue.Queue = queue.Queue()
        stop = threading.Event()
        streamer = _streamer_class()(self.tokenizer, events, stop)

        def work() -> None:
            try:
                self._pipeline.generate(inputs, config, streamer)
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
                    if guard is not None and guard.push(value):
                        stop.set()  # a loop: the pipeline ends at the next token
                elif kind == "text":
                    if text := matcher.push(value):
                        yield GenerationResponse(text, len(generated), len(ids), cached_tokens=cached)
                    if matcher.stopped:
                        stop.set()  # a stop string: the pipeline ends at the next token
                elif kind == "error":
                    failed = True
                    raise OvchatError(f"generation failed: {describe(value)}") from value
                else:
                    break
        finally:
            stop.set()
            try:
                _join(worker)
            finally:  # even when a second Ctrl-C comes through
                # A stopped answer stays in the pipeline's cache too: count its tokens for the next call.
                while not events.empty():
                    kind, value, _ = events.get_nowait()
                    generated += value if kind == "tokens" else []
                self._kv_ids = [] if failed else ids + generated
        if tail := matcher.flush():
            yield GenerationResponse(tail, len(generated), len(ids), cached_tokens=cached)
        count = len(generated)
        looped = guard is not None and guard.tripped
        ended = looped or matcher.stopped or generated and generated[-1] in self.stop_token_ids or count < budget
        ttft = first - started if first else None
        rate = (count - 1) / (last - first) if count > 1 and last > first else None
        yield GenerationResponse("", count, len(ids), "stop" if ended else "length", ttft, rate, cached, looped)

    def generate(self, prompt: str | Sequence[Message], **kwargs) -> str:
        """The whole answer as one string (see stream_generate for the arguments)."""
        return "".join(r.text for r in self.stream_generate(prompt, **kwargs))

    def timed_generate(
        self, ids: Sequence[int], new_tokens: int, on_tokens: Callable[[int], None] | None = None
    ) -> Timing:
        """Exactly `new_tokens` after a prompt given as ids (end of turn ignored), in one blocking call:
        the benchmarks' path, timed by OpenVINO GenAI itself. `on_tokens(count)` is called as tokens
        arrive, for timing from outside; without it no streamer runs."""
        import numpy as np
        import openvino as ov

        ids = list(ids)
        config = generation_config(SamplingParams(max_new_tokens=new_tokens), (), prompt_lookup=self.prompt_lookup)
        config.ignore_eos = True
        if not self._lock.acquire(blocking=False):
            raise OvchatError(f"{self.name} is already generating; finish or close that stream first")
        try:
            self._kv_ids = []  # a tensor prompt is not a ChatHistory: nothing of it is kept for the next call
            streamer = _counting_streamer_class()(on_tokens) if on_tokens else None
            result = self._pipeline.generate(ov.Tensor(np.asarray([ids], dtype=np.int64)), config, streamer)
        finally:
            self._lock.release()
        metrics = result.perf_metrics
        return Timing(
            metrics.get_num_input_tokens(),
            metrics.get_num_generated_tokens(),
            metrics.get_ttft().mean,
            metrics.get_tpot().mean,
        )


def _with_calls(pieces: Iterator[GenerationResponse], reader: StreamReader) -> Iterator[GenerationResponse]:
    """A tool-constrained answer as the caller sees it: a reply's text as it decodes, calls at the end."""
    for piece in pieces:
        shown = reader.push(piece.text)
        if piece.finish_reason is None:
            if shown:
                yield dataclasses.replace(piece, text=shown)
            continue
        held, calls = reader.finish()
        finish = "tool_calls" if calls else piece.finish_reason
        yield dataclasses.replace(piece, text=shown + held, finish_reason=finish, tool_calls=tuple(calls))


@dataclass(frozen=True)
class Timing:
    """One timed generation: token counts and OpenVINO GenAI's own timings, in milliseconds."""

    prompt_tokens: int
    new_tokens: int
    ttft_ms: float
    tpot_ms: float


def compile_folder(
    path: Path,
    device: str,
    info: dict | None,
    properties: dict,
    *,
    prompt_lookup: bool = False,
    precision: Precision | None = None,
) -> Model:
    """Compile an exported, verified folder on `device` with these OpenVINO properties."""
    import openvino_genai as ov_genai

    try:
        extra = {"prompt_lookup": True} if prompt_lookup else {}
        pipeline = ov_genai.LLMPipeline(str(path), device, **extra, **properties)
    except RuntimeError as exc:
        raise OvchatError(f"OpenVINO could not load {path} on {device}: {describe(exc)}") from None
    return Model(path, device, pipeline, info, prompt_lookup, precision)
