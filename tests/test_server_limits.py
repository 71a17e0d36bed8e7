"""`ovchat serve` under pressure and at its edges: capacity, disconnects, keys, hosts, signals, start-up."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import threading
import time

import httpx
import openai
import pytest
from helpers import GREEDY, GREEDY_KWARGS, Server, run_cli

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "Tell me a long story about a dragon."}]


def wait_for(condition, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def idle(server) -> bool:
    return server.metric("ovchat_requests_running") == 0 and server.metric("ovchat_queue_depth") == 0


@pytest.fixture(scope="module")
def small(smollm2_ov, tmp_path_factory):
    """One request at a time and one queue place: capacity is easy to fill."""
    running = Server(smollm2_ov, "--max-concurrency", "1", "--max-queue", "1",
                     log_path=tmp_path_factory.mktemp("small") / "serve.log", env={"OVCHAT_SSE_KEEPALIVE": "0.2"})
    yield running
    running.stop()


def long_stream(server, max_tokens: int = 400):
    body = {"messages": QUESTION, "max_tokens": max_tokens, "stream": True, **GREEDY}  # as long as before
    return httpx.stream("POST", server.base_url + "/v1/chat/completions", json=body, timeout=120)


def test_full_queue_answers_503_at_once_and_queued_requests_get_keepalives(small):
    with long_stream(small) as first:
        lines = first.iter_lines()
        assert next(lines).startswith("data: ")  # the slot is taken
        with long_stream(small, max_tokens=3) as queued:
            assert queued.status_code == 200
            assert wait_for(lambda: small.metric("ovchat_queue_depth") == 1)
            started = time.monotonic()
            refused = httpx.post(small.base_url + "/v1/chat/completions", json={"messages": QUESTION})
            elapsed = time.monotonic() - started
            assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
            assert refused.json()["error"]["code"] == "overloaded"
            assert elapsed < 2  # refused, not queued behind a 400-token answer
            with pytest.raises(openai.APIStatusError) as err:
                small.client().chat.completions.create(model="smollm2-135m", messages=QUESTION)
            assert err.value.status_code == 503
            waiting = queued.iter_lines()
            assert next(waiting).startswith("data: ")  # the role chunk comes at once
            assert next(waiting) == ""
            assert next(waiting) == ": keep-alive"  # nothing else arrives while it waits for the slot
            first.close()  # leaving frees the slot; the queued request runs and finishes
            # More keep-alives may come before its first token (one already on its way, or a slow
            # prefill on a busy machine): comments, never anything but data in between.
            rest = [line for line in waiting if line and line != ": keep-alive"]
            assert rest[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in rest)
    assert wait_for(lambda: idle(small))


def test_disconnect_frees_the_slot_within_a_moment(small):
    cancelled = small.metric("ovchat_requests_cancelled_total")
    for _ in range(3):
        with long_stream(small) as stream:
            assert stream.status_code == 200
            lines = stream.iter_lines()  # kept: a discarded line iterator closes the connection
            next(lines)
            assert small.metric("ovchat_requests_running") == 1
        assert wait_for(lambda: idle(small), timeout=5)
    # A non-streaming client that gives up is noticed too.
    with pytest.raises(httpx.ReadTimeout):
        body = {"messages": QUESTION, "max_tokens": 400, **GREEDY}
        httpx.post(small.base_url + "/v1/chat/completions", json=body, timeout=0.5)
    assert wait_for(lambda: idle(small), timeout=5)
    assert small.metric("ovchat_requests_cancelled_total") == cancelled + 4
    answer = small.client().chat.completions.create(model="smollm2-135m", messages=QUESTION, max_tokens=5,
                                                    **GREEDY_KWARGS)
    assert answer.usage.completion_tokens == 5


def test_two_hundred_clients_that_leave_early_then_one_that_stays(server):
    def leave(i: int) -> None:
        try:
            if i % 2:
                with long_stream(server) as stream:
                    next(stream.iter_lines())
            else:
                httpx.post(server.base_url + "/v1/chat/completions",
                           json={"messages": QUESTION, "max_tokens": 300, **GREEDY}, timeout=0.3)
        except (httpx.TimeoutException, StopIteration):
            pass

    for wave in range(5):  # 5 waves of 40: each fills every slot and queue place, then walks away
        threads = [threading.Thread(target=leave, args=(i,)) for i in range(40)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert wait_for(lambda: idle(server), timeout=30), f"wave {wave} left work behind"
    answer = server.client().chat.completions.create(model="smollm2-135m", messages=QUESTION, max_tokens=8,
                                                     **GREEDY_KWARGS)
    assert answer.usage.completion_tokens == 8 and answer.choices[0].message.content
    assert httpx.get(server.base_url + "/health").status_code == 200


def test_host_header_and_cors_defaults(server):
    url = server.base_url + "/v1/models"
    assert httpx.get(url, headers={"Host": "evil.example"}).status_code == 400  # DNS rebinding
    assert httpx.get(url, headers={"Host": f"localhost:{server.port}"}).status_code == 200
    answer = httpx.get(url, headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in answer.headers
    preflight = httpx.options(server.base_url + "/v1/chat/completions", headers={
        "Origin": "http://evil.example", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in preflight.headers


def test_api_key_and_allowed_origin(smollm2_ov, tmp_path):
    keyed = Server(smollm2_ov, "--cors-origin", "http://ok.example", log_path=tmp_path / "serve.log",
                   env={"OVCHAT_API_KEY": "s3cret-key"})
    try:
        url = keyed.base_url + "/v1/chat/completions"
        body = {"messages": QUESTION, "max_tokens": 2}
        assert httpx.post(url, json=body).json()["error"]["code"] == "invalid_api_key"
        wrong = httpx.post(url, json=body, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["error"]["type"] == "authentication_error"
        assert httpx.get(keyed.base_url + "/v1/models").status_code == 401
        assert httpx.get(keyed.base_url + "/metrics").status_code == 401
        assert httpx.get(keyed.base_url + "/health").status_code == 200  # probes need no key
        with pytest.raises(openai.AuthenticationError):
            keyed.client(api_key="nope").models.list()
        answer = keyed.client(api_key="s3cret-key").chat.completions.create(
            model="smollm2-135m", messages=QUESTION, max_tokens=2)
        assert answer.choices[0].message.content
        preflight = httpx.options(url, headers={"Origin": "http://ok.example", "Access-Control-Request-Method": "POST",
                                                "Access-Control-Request-Headers": "authorization,content-type"})
        assert preflight.headers["access-control-allow-origin"] == "http://ok.example"
        assert "access-control-allow-credentials" not in preflight.headers
        assert "s3cret-key" not in keyed.log()  # never logged
    finally:
        assert keyed.stop() == 0


def test_sigterm_finishes_the_request_in_flight_then_exits_0(smollm2_ov, tmp_path):
    running = Server(smollm2_ov, log_path=tmp_path / "serve.log", ready=False)
    # The port answers while the model loads: /health says so.
    states = []
    deadline = time.monotonic() + 120
    while (not states or states[-1] != 200) and time.monotonic() < deadline:
        try:
            states.append(httpx.get(running.base_url + "/health").status_code)
        except httpx.TransportError:
            pass
        time.sleep(0.02)
    assert states[0] == 503 and states[-1] == 200
    with long_stream(running, max_tokens=60) as stream:
        lines = stream.iter_lines()
        assert next(lines).startswith("data: ")
        running.proc.send_signal(signal.SIGTERM)
        rest = "\n".join(lines).strip()
        assert '"finish_reason": "length"' in rest and rest.endswith("data: [DONE]")
    assert running.proc.wait(30) == 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(running.base_url + "/health")
    assert "Waiting for connections to close" in running.log() or "stopping" in running.log()
    assert "Tell me a long story" not in running.log()  # prompts are not logged
    running.stop()


def test_tiny_phi3_through_the_server_and_the_exact_context_boundary(tiny_phi3_ov, tmp_path):
    tiny = Server(tiny_phi3_ov, log_path=tmp_path / "serve.log")
    try:
        client = tiny.client()
        name = client.models.list().data[0].id
        answer = client.chat.completions.create(model=name, messages=[{"role": "user", "content": "Hi"}])
        assert answer.choices[0].message.content == "Hello world!" and answer.choices[0].finish_reason == "stop"
        context = client.models.retrieve(name).model_extra["context_length"]
        assert context == 256
        fits = client.completions.create(model=name, prompt=[5] * (context - 1), max_tokens=50)
        assert fits.usage.completion_tokens == 1 and fits.choices[0].finish_reason == "length"  # clamped
        with pytest.raises(openai.BadRequestError) as err:
            client.completions.create(model=name, prompt=[5] * context, max_tokens=1)
        assert err.value.code == "context_length_exceeded"
        assert f"{context} tokens" in err.value.message
    finally:
        tiny.stop()


def test_start_up_refusals(tiny_phi3_ov, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_phi3_ov, broken)
    weights = broken / "openvino_model.bin"
    weights.write_bytes(weights.read_bytes()[:100])
    result = run_cli("serve", "--model", str(broken), "--port", "0", timeout=120)
    assert result.returncode == 1 and "openvino_model.bin" in result.stderr
    assert "http://" not in result.stderr  # refused before listening

    result = run_cli("serve", "--model", str(tiny_phi3_ov), "--host", "0.0.0.0", timeout=120)
    assert result.returncode == 1 and "--api-key" in result.stderr

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = run_cli("serve", "--model", str(tiny_phi3_ov), "--port", port, timeout=120)
    assert result.returncode == 1 and f"127.0.0.1:{port}" in result.stderr and "--port" in result.stderr


def test_engine_death_ends_streams_in_band_and_the_engine_is_restarted(smollm2_ov, tmp_path):
    import os

    import httpx

    running = Server(smollm2_ov, log_path=tmp_path / "serve.log")
    try:
        children = ["pgrep", "-P", str(running.proc.pid), "-f", "spawn_main"]  # not the resource tracker
        engine_pid = int(subprocess.check_output(children, text=True).split()[0])
        with long_stream(running) as stream:
            lines = stream.iter_lines()
            assert next(lines).startswith("data: ")
            os.kill(engine_pid, signal.SIGKILL)
            rest = "\n".join(lines).strip()
        assert '"error"' in rest and '"type": "server_error"' in rest and rest.endswith("data: [DONE]")
        assert "Traceback" not in rest and "/" not in rest.split('"message": "')[1].split('"')[0]
        # The server goes on: a new engine, and the next request is answered.
        assert wait_for(lambda: httpx.get(running.base_url + "/health").status_code == 200, timeout=120)
        health = httpx.get(running.base_url + "/health").json()["models"]["smollm2-135m"]
        assert health == {"state": "ready", "restarts": 1}
        answer = running.client().chat.completions.create(model="smollm2-135m", max_tokens=4,
                                                          messages=[{"role": "user", "content": "Hi"}])
        assert answer.choices[0].message.content and running.proc.poll() is None
        assert running.metric("ovchat_engine_restarts_total") == 1
        assert "the engine of smollm2-135m ended (the engine process ended); restart 1" in running.log()
    finally:
        running.stop()
