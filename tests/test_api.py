"""The HTTP side of `ovchat serve`, in-process: the real app, tokenizer and chat template of the tiny Phi-3,
with a scripted batch engine in place of the engine process. Fast; the real server is test_server*.py."""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import time

import httpx
import pytest
from helpers import sse_payloads
from test_server import BAD_CHAT, BAD_COMPLETION

from ovchat import runtime
from ovchat.sampling import CHAT_SAMPLING, SamplingParams
from ovchat.server.batching import EngineUnavailable, Job, Overloaded, Update
from ovchat.server.routes import create_app
from ovchat.server.served import Served
from ovchat.server.settings import Settings

pytestmark = pytest.mark.anyio

HI = [{"role": "user", "content": "Hi"}]


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture(scope="module")
def served(tiny_phi3_ov) -> Served:
    return Served.load(tiny_phi3_ov, info=None, context_cap=None)


class FakeBatch:
    """Stands in for BatchEngine (the engine process): every job is answered with the same scripted ids,
    one per step, ending with `finish` (or "length" at the job's budget). It records what it was given."""

    def __init__(self, script: list[int], finish: str = "stop"):
        self.script, self.finish = script, finish
        self.state = "ready"
        self.closing = False
        self.waiting: collections.deque[Job] = collections.deque()
        self.running: dict[int, Job] = {}
        self.observers: list = []
        self.last_progress = time.monotonic()
        self.refuse: Exception | None = None  # raised by submit()
        self.delay = 0.0  # seconds before each step
        self.loop: asyncio.AbstractEventLoop | None = None
        self.prompts: list[list[int]] = []
        self.sampling: list[SamplingParams] = []
        self.cancelled: list[str] = []  # the reason of each cancel
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task] = set()

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def submit(self, ids: list[int], sampling: SamplingParams) -> Job:
        if self.refuse is not None:
            raise self.refuse
        self.prompts.append(ids)
        self.sampling.append(sampling)
        job = Job(next(self._ids), ids, sampling, state="running")
        self.running[job.rid] = job
        task = asyncio.get_running_loop().create_task(self._play(job))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return job

    def cancel(self, job: Job, why: str = "client") -> None:
        job.cancel_reason = job.cancel_reason or why
        self.cancelled.append(why)

    def close(self) -> None:
        self.state = "closed"

    async def _play(self, job: Job) -> None:
        ids = self.script[: job.sampling.max_new_tokens]
        for step, token in enumerate(ids, 1):
            await asyncio.sleep(self.delay)
            if job.cancel_reason:
                return self._end(job, Update([], "cancelled"))
            now = time.perf_counter()
            job.first_token, job.last_token = job.first_token or now, now
            job.generated += 1
            scored = [scripted_logprob(token, job.sampling.top_logprobs)] if job.sampling.logprobs else None
            if step < len(ids):
                job.queue.put_nowait(Update([token], None, scored))
            else:
                finish = self.finish if len(ids) == len(self.script) else "length"
                return self._end(job, Update([token], finish, scored))
        self._end(job, Update([], self.finish))  # an empty script

    def _end(self, job: Job, update: Update) -> None:
        job.state = "done"
        self.running.pop(job.rid, None)
        job.queue.put_nowait(update)
        for observe in self.observers:
            observe(job, update.finish)


def scripted_logprob(token: int, alternatives: int):
    """What the engine process sends for a token: GenAI's log-prob, or (it, the best alternatives)."""
    logprob = -(token % 7) / 4
    if not alternatives:
        return logprob
    return logprob, [(token, logprob)] + [(token + k, logprob - k) for k in range(1, alternatives)]


@pytest.fixture
def hello(served) -> list[int]:
    """The tiny model's answer to a chat prompt: "Hello world!" then <|end|>."""
    return runtime.encode(served.tokenizer, "Hello world!", add_special_tokens=False) + [
        runtime.encode(served.tokenizer, "<|end|>", add_special_tokens=False)[0]
    ]


@pytest.fixture
def batch(hello) -> FakeBatch:
    return FakeBatch(hello)


def client(served: Served, batch: FakeBatch, **settings) -> httpx.AsyncClient:
    app = create_app(served, batch, Settings(**settings))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1")


def chat_ids(served: Served, messages: list[dict]) -> list[int]:
    prompt = runtime.render(served.tokenizer, served.name, messages)
    return runtime.encode(served.tokenizer, prompt, add_special_tokens=False)


def sse_events(body: str) -> list[dict]:
    """The JSON payloads of an SSE body, checking its framing on the way."""
    return [json.loads(payload) for payload in sse_payloads(body)]


def assert_error(answer: httpx.Response, status: int, param: str | None = None, code: str | None = None) -> dict:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/json"
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["param"] == param and error["code"] == code
    return error


# -- answers ----------------------------------------------------------------------------------------------
async def test_chat_answer_and_what_the_engine_was_given(served, batch, hello):
    async with client(served, batch) as http:
        answer = await http.post("/v1/chat/completions", json={"messages": HI})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["id"].startswith("chatcmpl-") and body["object"] == "chat.completion"
    assert body["model"] == served.name and body["system_fingerprint"].startswith("ovchat-")
    assert body["choices"] == [{"index": 0, "message": {"role": "assistant", "content": "Hello world!"},
                                "logprobs": None, "finish_reason": "stop"}]
    prompt = chat_ids(served, HI)
    assert batch.prompts == [prompt]  # the model's own chat template, no extra special tokens
    assert body["usage"] == {"prompt_tokens": len(prompt), "completion_tokens": len(hello),
                             "total_tokens": len(prompt) + len(hello)}
    sampling = batch.sampling[0]
    # Left out, the sampling fields take the model's recommendation (here: ovchat's measured default).
    assert served.sampling_source == "ovchat's default" and served.sampling.temperature > 0
    assert (sampling.temperature, sampling.top_p, sampling.top_k, sampling.repetition_penalty) == (
        served.sampling.temperature, served.sampling.top_p, served.sampling.top_k, served.sampling.repetition_penalty)
    assert sampling.json_schema is None and sampling.loop_guard
    assert sampling.max_new_tokens == served.context_length - len(prompt)  # clamped to what fits


async def test_sampling_params_reach_the_engine(served, batch):
    body = {"messages": HI, "temperature": 0.7, "top_p": 0.9, "top_k": 40, "seed": -1, "max_tokens": 9,
            "presence_penalty": 0.5, "frequency_penalty": -0.5, "repetition_penalty": 1.2, "stop": ["zz"],
            "response_format": {"type": "json_object"}}
    async with client(served, batch) as http:
        assert (await http.post("/v1/chat/completions", json=body)).status_code == 200
        both = {"messages": HI, "max_tokens": 9, "max_completion_tokens": 4, "seed": 7}
        assert (await http.post("/v1/chat/completions", json=both)).status_code == 200
        unseeded = [(await http.post("/v1/completions", json={"prompt": "Hi"})) for _ in range(2)]
        assert all(a.status_code == 200 for a in unseeded)
    first, second, *rest = batch.sampling
    assert first == SamplingParams(max_new_tokens=9, temperature=0.7, top_p=0.9, top_k=40, presence_penalty=0.5,
                                   frequency_penalty=-0.5, repetition_penalty=1.2, seed=2**63 - 1, stop=("zz",),
                                   json_schema=json.dumps({"type": "object"}))
    assert second.max_new_tokens == 4 and second.seed == 7  # max_completion_tokens wins
    assert rest[0].seed != rest[1].seed  # unseeded requests sample differently


async def test_the_server_limit_clamps_the_budget(served, batch, hello):
    async with client(served, batch, max_tokens_limit=2) as http:
        answer = await http.post("/v1/chat/completions", json={"messages": HI, "max_tokens": 100})
        models = (await http.get("/v1/models")).json()
    assert batch.sampling[0].max_new_tokens == 2
    body = answer.json()
    assert body["choices"][0]["finish_reason"] == "length" and body["usage"]["completion_tokens"] == 2
    assert body["choices"][0]["message"]["content"] == served.tokenizer.decode(hello[:2])
    assert models["data"][0]["max_tokens_limit"] == 2


async def test_developer_role_and_text_parts(served, batch):
    messages = [{"role": "developer", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "H"}, {"type": "text", "text": "i"}]}]
    async with client(served, batch) as http:
        assert (await http.post("/v1/chat/completions", json={"messages": messages})).status_code == 200
    assert batch.prompts == [chat_ids(served, [{"role": "system", "content": "Be brief."}, *HI])]


async def test_chat_stream_framing_and_usage(served, batch, hello):
    body = {"messages": HI, "stream": True, "stream_options": {"include_usage": True}}
    async with client(served, batch) as http:
        answer = await http.post("/v1/chat/completions", json=body)
        whole = (await http.post("/v1/chat/completions", json={"messages": HI})).json()
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/event-stream")
    assert answer.headers["cache-control"] == "no-cache" and answer.headers["x-accel-buffering"] == "no"
    chunks = sse_events(answer.text)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-1]) == "Hello world!"
    assert [ch["finish_reason"] for c in chunks for ch in c["choices"] if ch["finish_reason"]] == ["stop"]
    assert chunks[-2]["choices"][0]["delta"] == {}  # the finish comes in a chunk of its own
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == len(hello)
    assert chunks[-1]["usage"]["prompt_tokens"] == whole["usage"]["prompt_tokens"]
    assert all(c["usage"] is None for c in chunks[:-1])
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-")
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}


async def test_completion_stream_and_token_prompt(served, batch, hello):
    async with client(served, batch) as http:
        streamed = await http.post("/v1/completions", json={"prompt": [5, 6, 7], "stream": True})
        whole = (await http.post("/v1/completions", json={"prompt": "Hi there"})).json()
    chunks = sse_events(streamed.text)
    assert all("usage" not in c for c in chunks)  # not asked for
    assert {c["object"] for c in chunks} == {"text_completion"}
    assert "".join(c["choices"][0]["text"] for c in chunks) == "Hello world!"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert batch.prompts == [[5, 6, 7], runtime.encode(served.tokenizer, "Hi there")]
    assert whole["id"].startswith("cmpl-") and whole["object"] == "text_completion"
    assert whole["choices"][0]["text"] == "Hello world!"
    assert whole["usage"]["completion_tokens"] == len(hello)


async def test_keepalive_comments_while_waiting(served, batch):
    batch.delay = 0.1
    async with client(served, batch, keepalive_seconds=0.02) as http:
        answer = await http.post("/v1/chat/completions", json={"messages": HI, "stream": True})
    assert ": keep-alive\n\n" in answer.text
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in sse_events(answer.text)) == "Hello world!"


@pytest.mark.parametrize("stop,text", [(" wor", "Hello"), ("lo wo", "Hel"), (["!", "xyz"], "Hello world"),
                                       ("absent", "Hello world!")])
async def test_stop_strings_cut_exactly(served, batch, stop, text):
    async with client(served, batch) as http:
        whole = (await http.post("/v1/chat/completions", json={"messages": HI, "stop": stop})).json()
        streamed = await http.post("/v1/chat/completions", json={"messages": HI, "stop": stop, "stream": True})
    assert whole["choices"][0]["message"]["content"] == text and whole["choices"][0]["finish_reason"] == "stop"
    chunks = sse_events(streamed.text)
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == text
    assert [ch["finish_reason"] for c in chunks for ch in c["choices"] if ch["finish_reason"]] == ["stop"]
    if text != "Hello world!":  # the engine is told to stop generating
        assert batch.cancelled == ["stop string", "stop string"]


async def test_a_repeating_answer_is_ended_and_counted(served, batch, hello):
    # The engine loops: "Hello world!" again and again, past any sensible answer.
    batch.script = hello[:-1] * 60 + hello[-1:]
    async with client(served, batch) as http:
        whole = (await http.post("/v1/chat/completions", json={"messages": HI})).json()
        streamed = await http.post("/v1/chat/completions", json={"messages": HI, "stream": True})
        unguarded = (await http.post("/v1/chat/completions", json={"messages": HI, "loop_guard": False})).json()
        metrics = (await http.get("/metrics")).text
    text = whole["choices"][0]["message"]["content"]
    assert text.startswith("Hello world!Hello world!") and whole["choices"][0]["finish_reason"] == "stop"
    assert whole["choices"][0]["stopped_by"] == "loop_guard"  # said beside OpenAI's fields
    assert whole["usage"]["completion_tokens"] < 128  # ended after a few repeats, not at the end of the script
    chunks = sse_events(streamed.text)
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == text
    assert [c["choices"][0].get("stopped_by") for c in chunks if c["choices"][0]["finish_reason"]] == ["loop_guard"]
    assert not any("stopped_by" in c["choices"][0] for c in chunks if not c["choices"][0]["finish_reason"])
    assert batch.cancelled == ["loop", "loop"]  # the engine is told to stop generating
    assert unguarded["choices"][0]["message"]["content"] == "Hello world!" * 60  # asked for: no guard
    assert "stopped_by" not in unguarded["choices"][0]
    assert "ovchat_loops_stopped_total 2" in metrics
    assert [s.loop_guard for s in batch.sampling] == [True, True, False]


# -- refusals before the engine ---------------------------------------------------------------------------
@pytest.mark.parametrize("body,param", [(b, p) for _, b, p in BAD_CHAT], ids=[n for n, _, _ in BAD_CHAT])
async def test_bad_chat_input_is_a_400(served, batch, body, param):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with client(served, batch) as http:
        answer = await http.post("/v1/chat/completions", content=raw, headers={"Content-Type": "application/json"})
    assert assert_error(answer, 400, param)["type"] == "invalid_request_error"
    assert batch.prompts == []


@pytest.mark.parametrize("body,param", [(b, p) for _, b, p in BAD_COMPLETION], ids=[n for n, _, _ in BAD_COMPLETION])
async def test_bad_completion_input_is_a_400(served, batch, body, param):
    async with client(served, batch) as http:
        answer = await http.post("/v1/completions", json=body)
    assert_error(answer, 400, param)
    assert batch.prompts == []


async def test_refusals_name_the_field(served, batch):
    async with client(served, batch) as http:
        tools = await http.post("/v1/chat/completions", json={"messages": HI, "tools": [{"type": "function"}]})
        n = await http.post("/v1/chat/completions", json={"messages": HI, "n": 2})
        hot = await http.post("/v1/chat/completions", json={"messages": HI, "temperature": 3})
        unknown = await http.post("/v1/chat/completions", json={"messages": HI, "some_future_field": {"a": 1}})
    assert "field required" in assert_error(tools, 400, "tools[0].function")["message"]
    assert "n=1" in assert_error(n, 400, "n")["message"]
    assert assert_error(hot, 400, "temperature")["message"].startswith("temperature: ")
    assert unknown.status_code == 200  # unknown fields are ignored


async def test_context_window(served, batch):
    context = served.context_length
    async with client(served, batch) as http:
        huge = await http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x " * context}]})
        streamed = await http.post("/v1/chat/completions", json={
            "messages": [{"role": "user", "content": "x " * context}], "stream": True})
        full = await http.post("/v1/completions", json={"prompt": [5] * context, "max_tokens": 1})
        fits = await http.post("/v1/completions", json={"prompt": [5] * (context - 1), "max_tokens": 50})
        over = await http.post("/v1/completions", json={"prompt": "Hi", "max_tokens": context + 1})
        over_chat = await http.post("/v1/chat/completions", json={"messages": HI, "max_completion_tokens": 10**6})
    assert f"maximum context length is {context} tokens" in assert_error(
        huge, 400, "messages", "context_length_exceeded")["message"]
    assert_error(streamed, 400, "messages", "context_length_exceeded")  # before any stream bytes: plain JSON
    assert f"{context} tokens" in assert_error(full, 400, "prompt", "context_length_exceeded")["message"]
    assert fits.status_code == 200 and batch.sampling[-1].max_new_tokens == 1  # clamped to what fits
    assert fits.json()["choices"][0]["finish_reason"] == "length" and fits.json()["usage"]["completion_tokens"] == 1
    assert f"at most the context length ({context})" in assert_error(over, 400, "max_tokens")["message"]
    assert_error(over_chat, 400, "max_completion_tokens")
    assert len(batch.prompts) == 1


async def test_overloaded_and_unavailable_are_503_with_retry_after(served, batch):
    async with client(served, batch) as http:
        batch.refuse = Overloaded()
        full = await http.post("/v1/chat/completions", json={"messages": HI, "stream": True})
        batch.refuse = EngineUnavailable("loading")
        loading = await http.post("/v1/completions", json={"prompt": "Hi"})
    assert assert_error(full, 503, code="overloaded")["type"] == "server_error"
    assert full.headers["retry-after"] == "1"
    error = assert_error(loading, 503, code="unavailable")
    assert "(loading)" in error["message"] and error["type"] == "server_error"
    assert loading.headers["retry-after"] == "2"


async def test_wrong_content_type_and_big_bodies(served, batch):
    async with client(served, batch, max_body_bytes=1000) as http:
        plain = await http.post("/v1/chat/completions", content=json.dumps({"messages": HI}),
                                headers={"Content-Type": "text/plain"})
        big = await http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x" * 2000}]})

        async def chunks():  # no Content-Length: the cap must hold while reading
            yield b'{"messages": [{"role": "user", "content": "'
            for _ in range(3):
                yield b"x" * 500
            yield b'"}]}'

        json_type = {"Content-Type": "application/json"}
        chunked = await http.post("/v1/chat/completions", content=chunks(), headers=json_type)
        small = await http.post("/v1/chat/completions", json={"messages": HI})
    assert_error(plain, 415, code="unsupported_media")
    assert "limit of 1000 bytes" in assert_error(big, 413, code="body_too_large")["message"]
    assert_error(chunked, 413, code="body_too_large")
    assert small.status_code == 200


# -- the guard --------------------------------------------------------------------------------------------
async def test_api_key(served, batch):
    async with client(served, batch, api_key="s3cret-key") as http:
        none = await http.post("/v1/chat/completions", json={"messages": HI})
        wrong = await http.post("/v1/chat/completions", json={"messages": HI},
                                headers={"Authorization": "Bearer nope"})
        models = await http.get("/v1/models")
        metrics = await http.get("/metrics")
        health = await http.get("/health")
        page = await http.get("/")
        right = await http.post("/v1/chat/completions", json={"messages": HI},
                                headers={"Authorization": "bearer s3cret-key"})
    assert assert_error(none, 401, code="invalid_api_key")["message"].startswith("no API key provided")
    error = assert_error(wrong, 401, code="invalid_api_key")
    assert error["type"] == "authentication_error" and error["message"].startswith("incorrect API key")
    assert "s3cret-key" not in wrong.text
    assert models.status_code == metrics.status_code == 401
    assert health.status_code == 200 and page.status_code == 200  # probes and the page need no key
    assert right.status_code == 200
    assert len(batch.prompts) == 1


@pytest.mark.parametrize("host,status", [("127.0.0.1:8000", 200), ("localhost:8000", 200), ("[::1]:8000", 200),
                                         ("LOCALHOST", 200), ("lan.example:8000", 200), ("evil.example", 400),
                                         ("127.0.0.1.evil.example", 400), ("", 400)])
async def test_host_header_guards_against_dns_rebinding(served, batch, host, status):
    async with client(served, batch, allowed_hosts=["lan.example"]) as http:
        answer = await http.get("/v1/models", headers={"Host": host})
    assert answer.status_code == status
    if status == 400:
        assert "invalid Host header" in assert_error(answer, 400)["message"]


async def test_a_deliberate_public_bind_takes_any_host(served, batch):
    async with client(served, batch, host="0.0.0.0", api_key="k") as http:
        answer = await http.get("/v1/models", headers={"Host": "anything.example", "Authorization": "Bearer k"})
    assert answer.status_code == 200


async def test_cors(served, batch):
    preflight = {"Origin": "http://ok.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"}
    async with client(served, batch) as http:
        default = await http.options("/v1/chat/completions", headers=preflight)
        get = await http.get("/v1/models", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in default.headers and "access-control-allow-origin" not in get.headers
    async with client(served, batch, cors_origins=["http://ok.example"]) as http:
        allowed = await http.options("/v1/chat/completions", headers=preflight)
        other = await http.options("/v1/chat/completions", headers={**preflight, "Origin": "http://evil.example"})
    assert allowed.headers["access-control-allow-origin"] == "http://ok.example"
    assert "access-control-allow-credentials" not in allowed.headers
    assert "access-control-allow-origin" not in other.headers


# -- models, health, metrics, errors ----------------------------------------------------------------------
async def test_models(served, batch):
    async with client(served, batch) as http:
        listed = (await http.get("/v1/models")).json()
        one = (await http.get(f"/v1/models/{served.name}")).json()
        unknown = await http.get("/v1/models/gpt-4")
        wrong = [await http.post("/v1/chat/completions", json={"messages": HI, "model": name})
                 for name in ("gpt-4", "../../etc/passwd", f"{served.name}/../x")]
        right = await http.post("/v1/completions", json={"prompt": "Hi", "model": served.path.name})
    card = {"id": served.name, "object": "model", "created": served.created, "owned_by": "ovchat",
            "context_length": served.context_length, "max_tokens_limit": Settings().max_tokens_limit,
            "sampling_defaults": CHAT_SAMPLING,
            "sampling_source": "ovchat's default", "loaded": True}
    assert listed == {"object": "list", "data": [card]} and one == card
    assert_error(unknown, 404, "model", "model_not_found")
    for answer in wrong:
        assert_error(answer, 404, "model", "model_not_found")
    assert right.status_code == 200


@pytest.mark.parametrize("state,closing,running,idle_for,status,shown", [
    ("ready", False, False, 0, 200, "ok"),
    ("loading", False, False, 0, 503, "loading"),
    ("broken", False, False, 0, 503, "broken"),
    ("ready", True, False, 0, 503, "stopping"),
    ("ready", False, True, 10, 200, "ok"),
    ("ready", False, True, 1000, 503, "stalled"),
    ("ready", False, False, 1000, 200, "ok"),  # idle is not stalled
])
async def test_health(served, batch, state, closing, running, idle_for, status, shown):
    batch.state, batch.closing = state, closing
    batch.running = {1: Job(1, [1], SamplingParams())} if running else {}
    batch.last_progress = time.monotonic() - idle_for
    async with client(served, batch) as http:
        answer = await http.get("/health")
    engine = {"state": state, "restarts": 0}
    expected = {"status": shown, "model": served.name, "models": {served.name: engine}}
    assert answer.status_code == status and answer.json() == expected


async def test_metrics_count_requests_and_tokens(served, batch, hello):
    async with client(served, batch) as http:
        await http.post("/v1/completions", json={"prompt": [5, 6], "max_tokens": 2})
        await http.post("/v1/chat/completions", json={"messages": HI})
        await http.get("/nowhere")
        text = (await http.get("/metrics")).text
    lines = dict(line.rsplit(" ", 1) for line in text.splitlines() if not line.startswith("#"))
    assert lines['ovchat_requests_total{path="/v1/completions",status="200"}'] == "1"
    assert lines['ovchat_requests_total{path="other",status="404"}'] == "1"
    assert lines["ovchat_prompt_tokens_total"] == str(2 + len(chat_ids(served, HI)))
    assert lines["ovchat_generation_tokens_total"] == str(2 + len(hello))
    assert lines["ovchat_time_to_first_token_seconds_count"] == "2"
    assert lines["ovchat_requests_running"] == "0" and lines["ovchat_queue_depth"] == "0"


async def test_unknown_routes_and_methods(served, batch):
    async with client(served, batch) as http:
        missing = await http.get("/v2/anything")
        method = await http.get("/v1/chat/completions")
        asset = await http.get("/ui/../cli.py")
    assert assert_error(missing, 404, code="not_found")["message"] == "no route /v2/anything"
    assert assert_error(method, 405, code="method_not_allowed")["message"] == "GET is not allowed here"
    assert asset.status_code == 404


async def test_the_page_and_no_page(served, batch):
    async with client(served, batch) as http:
        page = await http.get("/")
    assert page.status_code == 200 and "default-src 'none'" in page.headers["content-security-policy"]
    async with client(served, batch, web_ui=False) as http:
        assert_error(await http.get("/"), 404, code="not_found")


@pytest.mark.parametrize("finish,status,code,param", [
    ("error:schema:bad bounds", 400, "invalid_json_schema", "response_format"),
    ("error:the engine process ended", 500, "generation_failed", None),
])
async def test_generation_failures(served, hello, finish, status, code, param):
    batch = FakeBatch(hello[:2], finish=finish)
    async with client(served, batch) as http:
        whole = await http.post("/v1/chat/completions", json={"messages": HI})
        streamed = await http.post("/v1/chat/completions", json={"messages": HI, "stream": True})
    assert finish.split(":")[-1] in assert_error(whole, status, param, code)["message"]
    events = streamed.text.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]  # in band: the stream had begun
    assert json.loads(events[-3].removeprefix("data: "))["error"]["code"] == code


async def test_lifespan_attaches_the_engine_to_the_loop(served, batch):
    app = create_app(served, batch, Settings())
    async with app.router.lifespan_context(app):
        assert batch.loop is asyncio.get_running_loop()
