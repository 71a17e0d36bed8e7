"""One real `ovchat serve` holding two chat models (SmolLM2, loaded at start, and the tiny Phi-3, loaded
on demand) and the embedding model, through the official openai, ollama and anthropic clients."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import anthropic
import httpx
import ollama
import pytest
from helpers import Server

pytestmark = pytest.mark.slow
HI = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def many(smollm2_ov, tiny_phi3_ov, minilm_ov, tmp_path_factory):
    running = Server(smollm2_ov, "--model", str(tiny_phi3_ov), "--embedding-model", str(minilm_ov),
                     "--keep-alive", "2", log_path=tmp_path_factory.mktemp("serve") / "serve.log")
    yield running
    running.stop()


def loaded(server) -> dict:
    return {m["id"]: m.get("loaded") for m in httpx.get(server.base_url + "/v1/models").json()["data"]}


def test_two_models_answer_at_once_in_every_dialect(many, tiny_phi3_ov):
    tiny = tiny_phi3_ov.name
    assert loaded(many) == {"smollm2-135m": True, tiny: False, "all-minilm-l6-v2": None}
    openai_client = many.client()

    def chat(model: str) -> str:
        answer = openai_client.chat.completions.create(model=model, messages=HI, max_tokens=24, temperature=0)
        return answer.choices[0].message.content

    with ThreadPoolExecutor(4) as pool:  # the tiny model loads while SmolLM2 answers
        answers = list(pool.map(chat, ["smollm2-135m", tiny, "smollm2-135m", tiny]))
    assert answers[0] == answers[2] and answers[1] == answers[3] and all(answers)
    assert loaded(many) == {"smollm2-135m": True, tiny: True, "all-minilm-l6-v2": None}
    client = ollama.Client(host=many.base_url)
    assert {m.model for m in client.ps().models} == {"smollm2-135m:latest", f"{tiny}:latest"}
    said = client.chat(model=tiny, messages=HI, options={"temperature": 0, "num_predict": 24})
    assert said.message.content == answers[1]
    wrote = anthropic.Anthropic(base_url=many.base_url, api_key="unused", max_retries=0).messages.create(
        model=tiny, max_tokens=24, messages=HI, extra_body={"temperature": 0})
    assert wrote.content[0].text == answers[1]
    assert len(client.embed(model="all-minilm-l6-v2", input="Hi").embeddings[0]) == 384


def test_keep_alive_unloads_and_a_request_reloads(many, tiny_phi3_ov):
    tiny = tiny_phi3_ov.name
    client = many.client()
    first = client.chat.completions.create(model=tiny, messages=HI, max_tokens=8, temperature=0)
    deadline = time.monotonic() + 30
    while loaded(many)[tiny] and time.monotonic() < deadline:  # idle for --keep-alive 2 s: unloaded
        time.sleep(0.2)
    assert loaded(many) == {"smollm2-135m": True, tiny: False, "all-minilm-l6-v2": None}  # the first stays
    again = client.chat.completions.create(model=tiny, messages=HI, max_tokens=8, temperature=0)
    assert again.choices[0].message.content == first.choices[0].message.content
    assert f"unloading {tiny} (idle for 2 s)" in many.log()
    ollama.Client(host=many.base_url).generate(model=tiny, prompt="", keep_alive=0)  # Ollama's unload
    deadline = time.monotonic() + 10
    while loaded(many)[tiny] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not loaded(many)[tiny]
