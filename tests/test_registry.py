"""Several chat models in one server, in-process: loading on demand, the loaded-model cap and memory
budget, keep-alive, never unloading under a request, and restarting a dead engine. The real app and
tokenizers of two tiny models; scripted engines (test_api.FakeBatch) in place of engine processes. The
real server with real engines: test_server_models.py."""

from __future__ import annotations

import asyncio
import dataclasses

import httpx
import ollama
import pytest
from test_api import HI, FakeBatch

from ovchat import runtime
from ovchat.server.metrics import Metrics
from ovchat.server.registry import Entry, Maker, Registry
from ovchat.server.routes import create_app
from ovchat.server.served import Served
from ovchat.server.settings import Settings

pytestmark = pytest.mark.anyio
GB = 10**9


@pytest.fixture
def anyio_backend():
    return "asyncio"


class ScriptedMaker(Maker):
    """Engines that answer "Hello world!" at once (or fail to load, for the names in `broken`)."""

    def __init__(self, need: dict[str, float], broken: tuple[str, ...] = ()):
        self.need, self.broken, self.started, self.batches = need, broken, [], {}

    def served(self, entry: Entry) -> Served:
        return dataclasses.replace(Served.load(entry.path, None, None), name=entry.name)

    def need_bytes(self, entry: Entry) -> int:
        return int(self.need[entry.name] * GB)

    def start(self, entry: Entry) -> FakeBatch:
        tokenizer = entry.served.tokenizer
        script = runtime.encode(tokenizer, "Hello world!", add_special_tokens=False)
        batch = FakeBatch(script + runtime.encode(tokenizer, "<|end|>", add_special_tokens=False))
        if entry.name in self.broken:
            batch.state, batch.problem = "broken", "OpenVINO could not compile it"
        batch.delay = self.delay
        self.started.append(entry.name)
        self.batches[entry.name] = batch
        return batch

    delay = 0.0


@pytest.fixture(scope="module")
def folders(tiny_phi3_ov, tiny_phi3_long_ov):
    return {"a": tiny_phi3_ov, "b": tiny_phi3_long_ov}


def registry(folders, maker: ScriptedMaker, pin: bool = True, **options) -> Registry:
    """a (the first --model: kept loaded unless `pin` is off) and b."""
    entries = [Entry(name, path, pinned=pin and name == "a") for name, path in folders.items()]
    settings = Settings()
    return Registry(entries, settings, Metrics({}), maker, **options)


def client(reg: Registry) -> httpx.AsyncClient:
    app = create_app(None, None, reg.settings, registry=reg)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1")


async def ask(http: httpx.AsyncClient, model: str) -> httpx.Response:
    return await http.post("/v1/chat/completions", json={"model": model, "messages": HI})


async def started(reg: Registry) -> None:
    """Start the registry on this loop (what the app's lifespan does), the default model loaded."""
    reg.attach(asyncio.get_running_loop())
    for _ in range(500):
        if reg.default.state == "ready":
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"the default model did not load: {reg.states()}")


async def test_a_model_loads_when_first_named_and_is_listed_either_way(folders):
    maker = ScriptedMaker({"a": 1, "b": 1})
    reg = registry(folders, maker, max_loaded=2)
    await started(reg)
    async with client(reg) as http:
        listed = {m["id"]: m["loaded"] for m in (await http.get("/v1/models")).json()["data"]}
        answer = await ask(http, "b")
        after = {m["id"]: m["loaded"] for m in (await http.get("/v1/models")).json()["data"]}
        health = (await http.get("/health")).json()
    assert listed == {"a": True, "b": False} and after == {"a": True, "b": True}
    assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"] == "Hello world!"
    assert answer.json()["model"] == "b" and maker.started == ["a", "b"]
    assert health["status"] == "ok" and {m["state"] for m in health["models"].values()} == {"ready"}


async def test_the_least_recently_used_idle_model_makes_room(folders):
    maker = ScriptedMaker({"a": 1, "b": 1})
    reg = registry(folders, maker, pin=False, max_loaded=1)
    await started(reg)
    async with client(reg) as http:
        assert (await ask(http, "b")).status_code == 200  # a is idle: unloaded for b
        assert [e.name for e in reg.loaded()] == ["b"] and maker.batches["a"].state == "closed"
        assert (await ask(http, "a")).status_code == 200
    assert maker.started == ["a", "b", "a"] and reg.metrics.counters["ovchat_model_loads_total"][1] == 3
    kept = registry(folders, ScriptedMaker({"a": 1, "b": 1}), max_loaded=1)  # a named first: never unloaded
    await started(kept)
    async with client(kept) as http:
        refused = await ask(http, "b")
    assert refused.status_code == 503 and "--max-loaded" in refused.json()["error"]["message"]


async def test_a_busy_model_is_never_unloaded_for_another(folders):
    maker = ScriptedMaker({"a": 1, "b": 1})
    maker.delay = 0.05  # a's answer takes a while
    reg = registry(folders, maker, max_loaded=1)
    await started(reg)
    async with client(reg) as http:
        running = asyncio.create_task(ask(http, "a"))
        for _ in range(400):  # a's job reaches its engine
            if maker.batches["a"].running:
                break
            await asyncio.sleep(0.005)
        refused = await ask(http, "b")
        finished = await running
    assert refused.status_code == 503 and refused.headers["retry-after"] == "2"
    assert refused.json()["error"]["code"] == "overloaded" and "(a)" in refused.json()["error"]["message"]
    assert finished.status_code == 200 and [e.name for e in reg.loaded()] == ["a"]


async def test_the_memory_budget(folders):
    maker = ScriptedMaker({"a": 1, "b": 3})
    reg = registry(folders, maker, pin=False, max_loaded=3, budget_bytes=3.5 * GB)
    await started(reg)
    async with client(reg) as http:
        fits = await ask(http, "b")  # 1 + 3 > 3.5: a (idle) goes
        assert [e.name for e in reg.loaded()] == ["b"]
        maker.need["b"] = 5
        reg.entries[1].state = "unloaded"
        await reg.unload(reg.entries[1], "test")
        never = await ask(http, "b")
    assert fits.status_code == 200
    assert never.status_code == 507 and never.json()["error"]["code"] == "insufficient_memory"
    assert "5.0 GB" in never.json()["error"]["message"] and "3.5 GB" in never.json()["error"]["message"]


async def test_keep_alive_unloads_idle_models_and_a_request_reloads(folders):
    maker = ScriptedMaker({"a": 1, "b": 1})
    reg = registry(folders, maker, max_loaded=2, keep_alive=0.2)
    await started(reg)
    async with client(reg) as http:
        assert (await ask(http, "b")).status_code == 200
        await asyncio.sleep(0.8)
        assert [e.name for e in reg.loaded()] == ["a"]  # b went; a was named first: it stays
        assert (await ask(http, "b")).status_code == 200
    assert maker.started == ["a", "b", "b"]


async def test_ollamas_keep_alive_and_load_requests(folders):
    maker = ScriptedMaker({"a": 1, "b": 1})
    reg = registry(folders, maker, max_loaded=2)
    await started(reg)
    app = create_app(None, None, reg.settings, registry=reg)
    client = ollama.AsyncClient(host="http://127.0.0.1:11434", transport=httpx.ASGITransport(app=app))
    loaded = await client.generate(model="b", prompt="")  # Ollama's way to preload
    running = (await client.ps()).models
    assert loaded.done_reason == "load" and loaded.load_duration > 0 and len(running) == 2
    assert {m.model for m in (await client.list()).models} == {f"{e.served.name}:latest" for e in reg.entries}
    gone = await client.generate(model="b", prompt="", keep_alive=0)  # ... and to unload
    await asyncio.sleep(0.6)
    assert gone.done_reason == "unload" and [e.name for e in reg.loaded()] == ["a"]
    answered = await client.chat(model="b", messages=HI, keep_alive="1h")
    assert answered.load_duration > 0 and reg.keep_alive_of(reg.entries[1]) == 3600
    with pytest.raises(ollama.ResponseError) as refused:
        await client.chat(model="b", messages=HI, keep_alive="soon")
    assert refused.value.status_code == 400 and "keep_alive" in refused.value.error


async def test_a_dead_engine_is_restarted_with_backoff_while_the_other_model_serves(folders):
    maker = ScriptedMaker({"a": 1, "b": 1})
    reg = registry(folders, maker, max_loaded=2)
    await started(reg)
    async with client(reg) as http:
        assert (await ask(http, "b")).status_code == 200
        maker.batches["a"].state, maker.batches["a"].problem = "broken", "the engine process ended"
        await asyncio.sleep(0.4)  # the watcher notices, and waits a second before the restart
        health = (await http.get("/health")).json()
        during = await ask(http, "a")
        other = await ask(http, "b")
        await asyncio.sleep(1.2)
        after = await ask(http, "a")
        metrics = (await http.get("/metrics")).text
    assert health["status"] == "restarting" and health["models"]["a"]["restarts"] == 1
    assert during.status_code == 503 and "restarting" in during.json()["error"]["message"]
    assert other.status_code == 200 and after.status_code == 200
    assert 'ovchat_engine_restarts_total{model="a"} 1' in metrics and maker.started == ["a", "b", "a"]


async def test_a_model_that_cannot_load_is_a_clear_error(folders):
    maker = ScriptedMaker({"a": 1, "b": 1}, broken=("b",))
    reg = registry(folders, maker, max_loaded=2)
    await started(reg)
    async with client(reg) as http:
        answer = await ask(http, "b")
        unknown = await ask(http, "c")
    assert answer.status_code == 500 and answer.json()["error"]["code"] == "load_failed"
    assert "OpenVINO could not compile it" in answer.json()["error"]["message"]
    assert unknown.status_code == 404 and "'a', 'b'" in unknown.json()["error"]["message"]
    assert reg.states()["b"] == {"state": "failed", "restarts": 0, "problem": "OpenVINO could not compile it"}


async def test_requests_are_checked_before_a_model_loads_for_them(folders):
    maker = ScriptedMaker({"a": 1, "b": 1})
    reg = registry(folders, maker, max_loaded=2)
    await started(reg)
    bad_tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}
    async with client(reg) as http:
        refused = await http.post("/v1/chat/completions", json={"model": "b", "messages": HI, "tools": [bad_tool]})
        counted = await http.post("/v1/messages/count_tokens", json={"model": "b", "messages": HI})
        # Ollama's unload of a model that is not loaded leaves it so; curl's body without a Content-Type is read.
        gone = await http.post("/api/generate", content=b'{"model": "b", "prompt": "", "keep_alive": 0}')
    assert refused.status_code == 400 and counted.status_code == 200 and counted.json()["input_tokens"] > 0
    assert gone.status_code == 200 and gone.json()["done_reason"] == "unload"
    assert maker.started == ["a"]  # b was never loaded


async def test_a_first_model_past_the_memory_budget_fails_clearly(folders):
    reg = registry(folders, ScriptedMaker({"a": 9, "b": 1}), budget_bytes=4 * GB)
    reg.attach(asyncio.get_running_loop())
    for _ in range(200):
        if reg.default.state == "failed":
            break
        await asyncio.sleep(0.01)
    assert reg.states()["a"]["state"] == "failed"  # the server stops with this line
    assert "needs about 9.0 GB" in reg.default.problem and "--memory-budget-gb" in reg.default.problem
