"""Generation behind the routes: a parsed request becomes token ids, a job in the batch engine, and an
answer sent as one JSON object or as an SSE stream.

Request → strict validation (protocol.py, routes.py) → chat template and tokens here → the engine process
(batching.py, engine_process.py) → text deltas (detok.py) → a JSON answer or an SSE stream.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import Request
from fastapi.responses import StreamingResponse

from .. import runtime
from ..config import SERVE_STALL_SECONDS, format_ms
from ..errors import OvchatError
from ..sampling import RECOMMENDED_FIELDS
from ..tools import StreamReader, ToolPlan
from .answer import Answer, Event, GenerationFailed, collect, schema_param
from .batching import BatchEngine, EngineUnavailable, Job, Overloaded
from .logprobs import TokenText, chat_entries, completion_logprobs
from .metrics import Metrics
from .protocol import ApiError, ChatRequest, CompletionRequest
from .served import Served
from .settings import Settings

log = logging.getLogger("ovchat.server")
NO_TOOLS = ToolPlan(())


async def chat_input(served: Served, req: ChatRequest) -> tuple[list[int], ToolPlan, dict]:
    """A chat request's prompt ids, its tool plan and the constraint its answer is generated under: every
    check that needs the model's tokenizer and template, done before its engine is asked for."""
    plan = req.tool_plan(served.tool_format)
    messages = plan.prepare(req.messages_plain())
    # A long prompt must not stall every stream: templated and tokenized off the event loop.
    ids = await asyncio.to_thread(_chat_ids, served, messages, plan.template_tools())
    constraint = plan.constraint() if plan.active else {"json_schema": req.schema()}
    return ids, plan, constraint


async def completion_input(served: Served, req: CompletionRequest) -> list[int]:
    """A completion request's prompt ids: its text as is (no chat template), or the ids it gave."""
    if isinstance(req.prompt, str):
        return await asyncio.to_thread(runtime.encode, served.tokenizer, req.prompt)
    bad = next((t for t in req.prompt if not 0 <= t < served.vocab_size), None)
    if bad is not None:
        raise ApiError(400, f"prompt: token id {bad} is outside the vocabulary (0..{served.vocab_size - 1})", "prompt")
    return list(req.prompt)


def model_card(served: Served, settings: Settings) -> dict:
    """A chat model as /v1/models shows it (whether or not its engine is loaded)."""
    sampling = served.sampling
    return {
        "id": served.name,
        "object": "model",
        "created": served.created,
        "owned_by": "ovchat",
        "context_length": served.context_length,
        "max_tokens_limit": settings.max_tokens_limit,
        # What a request that leaves these out gets (ovchat's fields, beside OpenAI's).
        "sampling_defaults": {name: getattr(sampling, name) for name in RECOMMENDED_FIELDS},
        "sampling_source": served.sampling_source,
    }


def _chat_ids(served: Served, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
    try:
        prompt = runtime.render(served.tokenizer, served.name, messages, tools=tools)
    except OvchatError as exc:
        raise ApiError(400, str(exc), "messages") from None
    return runtime.encode(served.tokenizer, prompt, add_special_tokens=False)


class Serving:
    """The served model as the routes see it: its card and health, and answers to parsed requests."""

    def __init__(self, served: Served, batch: BatchEngine, settings: Settings, metrics: Metrics | None = None):
        self.served, self.batch, self.settings = served, batch, settings
        self.fingerprint = f"ovchat-{version()}"
        self.metrics = metrics or Metrics({})  # the server's, shared by every model it serves
        batch.observers.append(self._observe)

    def _observe(self, job: Job, finish: str) -> None:
        metrics = self.metrics
        metrics.count("ovchat_generation_tokens_total", job.generated)
        if finish == "cancelled" and job.cancel_reason == "client":
            metrics.count("ovchat_requests_cancelled_total")
        if job.first_token:
            metrics.ttft.observe(job.first_token - job.submitted)
            if job.generated > 1:
                metrics.tpot.observe((job.last_token - job.first_token) / (job.generated - 1))

    def _count_loop(self) -> None:
        self.metrics.count("ovchat_loops_stopped_total")

    @functools.cached_property
    def token_text(self) -> TokenText:
        return TokenText(self.served.path, self.served.tokenizer)

    def _logprobs(self, chat: bool, scored: list, offset: int = 0) -> tuple[dict, int]:
        """The `logprobs` of a choice (or of a chunk's) for [(token id, value), ...], and the legacy
        completions' text offset after them."""
        if chat:
            return {"content": chat_entries(scored, self.token_text), "refusal": None}, offset
        return completion_logprobs(scored, self.token_text, offset)

    # -- what the model is and how it is doing -----------------------------------------------------
    def health(self) -> tuple[dict, int]:
        """/health's body and status: 200 only while the engine is ready and making progress."""
        batch = self.batch
        state = batch.state
        if state == "ready" and batch.running and time.monotonic() - batch.last_progress > SERVE_STALL_SECONDS:
            state = "stalled"  # requests in the engine, yet no step finished for that long
        if state == "ready" and batch.closing:
            state = "stopping"
        body = {"status": "ok" if state == "ready" else state, "model": self.served.name}
        return body, 200 if state == "ready" else 503

    async def chat(self, request: Request, req: ChatRequest, prepared: tuple | None = None):
        ids, plan, constraint = prepared or await chat_input(self.served, req)
        return await self._generate(request, req, ids, chat=True, plan=plan, constraint=constraint)

    async def complete(self, request: Request, req: CompletionRequest, ids: list[int] | None = None):
        ids = ids if ids is not None else await completion_input(self.served, req)
        return await self._generate(request, req, ids, chat=False, plan=NO_TOOLS)

    # -- admission and the answer ------------------------------------------------------------------
    async def admit(
        self,
        req,
        ids: list[int],
        chat: bool,
        constraint: dict | None = None,
        budget_param: str | None = None,
        ceiling: bool = False,
    ) -> Answer:
        """The prompt checked against the context, the budget granted, and the job in the engine.
        `budget_param` names the request's token budget in a dialect's words; with `ceiling` a budget
        past the context is a ceiling (clamped, as Anthropic's and Ollama's clients expect), not a 400."""
        settings = self.settings
        context = self.served.context_length
        if len(ids) >= context:
            raise ApiError(
                400,
                f"this model's maximum context length is {context} tokens, but the prompt has "
                f"{len(ids)} tokens; shorten it",
                "messages" if chat else "prompt",
                "context_length_exceeded",
            )
        asked = req.budget()
        field_name = budget_param or ("max_completion_tokens" if chat and req.max_completion_tokens else "max_tokens")
        if asked is not None and asked > context and not ceiling:
            raise ApiError(400, f"{field_name} must be at most the context length ({context}), not {asked}", field_name)
        # Documented choice: an answer that would not fit (or passes the server's limit) is clamped and
        # ends with finish_reason "length".
        budget = min(asked or settings.max_tokens_limit, settings.max_tokens_limit, context - len(ids))
        sampling = req.sampling(budget, defaults=self.served.sampling, **(constraint or {}))
        if sampling.logprobs:
            await asyncio.to_thread(lambda: self.token_text)  # read the vocabulary once, off the event loop
        job = self._submit(ids, sampling)
        self.metrics.count("ovchat_prompt_tokens_total", len(ids))
        return Answer(self.batch, job, self.served.tokenizer, self._count_loop, self.served.stop_ids)

    async def events(self, answer: Answer, plan: ToolPlan, chat: bool = True) -> AsyncIterator[Event]:
        """A streamed answer as dialect-free events: text as it is safe to show, then the calls (chat: held
        back until the end) with the finish. `waiting` events come while nothing arrives for a while."""
        reader = StreamReader(plan)
        while True:
            piece = await answer.next(self.settings.keepalive_seconds)
            if piece is None:
                yield Event(waiting=True)  # long prefill or a queue wait: keep proxies from timing out
                continue
            yield Event(reader.push(piece.text) if chat else piece.text, piece.logprobs)
            if piece.finish:
                calls = []
                if chat:  # what was held back: calls, or an answer not in the generic form
                    content, calls = reader.finish()
                    if content:
                        yield Event(content)
                yield Event(finish="tool_calls" if calls else piece.finish, calls=calls)
                return

    async def _generate(
        self,
        request: Request,
        req,
        ids: list[int],
        chat: bool,
        plan: ToolPlan,
        constraint: dict | None = None,
    ):
        answer = await self.admit(req, ids, chat, constraint)
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        if req.stream:
            usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(
                self._stream(answer, rid, created, chat, usage, len(ids), plan),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        text, finish, scored = await collect(request, answer, plan)
        log_done(rid, len(ids), answer.job, finish)
        head = self._header(rid, "chat.completion" if chat else "text_completion", created)
        logprobs = self._logprobs(chat, scored)[0] if answer.job.sampling.logprobs else None
        if chat:
            content, calls = plan.read(text)
            message = {"role": "assistant", "content": content}
            if calls:
                message["tool_calls"] = [call.as_openai() for call in calls]
                finish = "tool_calls"
            choice = {"index": 0, "message": message, "logprobs": logprobs, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish}
        return {**head, "choices": [_mark(choice, answer)], "usage": _usage(len(ids), answer.tokens)}

    def _submit(self, ids: list[int], sampling) -> Job:
        try:
            return self.batch.submit(ids, sampling)
        except Overloaded:
            raise ApiError(
                503,
                "the server is at capacity (all slots and queue places taken); retry shortly",
                kind="server_error",
                code="overloaded",
                headers={"Retry-After": "1"},
            ) from None
        except EngineUnavailable as exc:
            raise ApiError(
                503,
                f"the model is not available ({exc}); retry shortly",
                kind="server_error",
                code="unavailable",
                headers={"Retry-After": "2"},
            ) from None

    def _header(self, rid: str, kind: str, created: int) -> dict:
        """The fields every answer and every stream chunk starts with."""
        return {
            "id": rid,
            "object": kind,
            "created": created,
            "model": self.served.name,
            "system_fingerprint": self.fingerprint,
        }

    async def _stream(
        self,
        answer: Answer,
        rid: str,
        created: int,
        chat: bool,
        usage: bool,
        prompt_tokens: int,
        plan: ToolPlan,
    ) -> AsyncIterator[str]:
        head = self._header(rid, "chat.completion.chunk" if chat else "text_completion", created)
        wants_logprobs = answer.job.sampling.logprobs
        scored: list = []  # log-probs of tokens whose text is not sent yet
        offset = 0  # the legacy completions' text_offset

        def event(text: str | None, finish: str | None, role: bool = False, delta: dict | None = None) -> str:
            nonlocal offset
            logprobs = None
            if wants_logprobs and scored and not role:
                logprobs, offset = self._logprobs(chat, scored, offset)
                scored.clear()
            if chat:
                if delta is None:
                    delta = {"role": "assistant", "content": ""} if role else {} if text is None else {"content": text}
                choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": text or "", "logprobs": logprobs, "finish_reason": finish}
            chunk = {**head, "choices": [_mark(choice, answer) if finish else choice]}
            if usage:
                chunk["usage"] = None
            return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"

        finish = None
        try:
            if chat:
                yield event(None, None, role=True)
            async for step in self.events(answer, plan, chat):
                if step.waiting:
                    yield ": keep-alive\n\n"
                    continue
                scored += step.logprobs
                if step.text:
                    yield event(step.text, None)
                if step.finish:
                    finish = step.finish
                    for index, call in enumerate(step.calls):
                        for delta in call.deltas(index):
                            yield event(None, None, delta={"tool_calls": [delta]})
                    yield event(None, finish)
            if usage:
                totals = _usage(prompt_tokens, answer.tokens)
                yield f"data: {json.dumps({**head, 'choices': [], 'usage': totals})}\n\n"
        except GenerationFailed as exc:
            log.warning("%s failed: %s", rid, exc)
            yield f"data: {json.dumps(exc.error(schema_param(plan)).body())}\n\n"
        finally:
            answer.close()
            log_done(rid, prompt_tokens, answer.job, finish or "cut")
        yield "data: [DONE]\n\n"


def _mark(choice: dict, answer: Answer) -> dict:
    """A choice the loop guard ended says so (finish_reason stays "stop", as OpenAI's clients expect)."""
    return {**choice, "stopped_by": "loop_guard"} if answer.looped else choice


def _usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def log_done(rid: str, prompt_tokens: int, job: Job, finish: str) -> None:
    ttft = format_ms(job.first_token - job.submitted if job.first_token else None)
    log.info(
        "%s: %d prompt tokens, %d generated, first token %s, finish %s",
        rid,
        prompt_tokens,
        job.generated,
        ttft,
        finish,
    )


def version() -> str:
    from .. import __version__  # here, not at the top: the package's __init__ imports most of ovchat

    return __version__
