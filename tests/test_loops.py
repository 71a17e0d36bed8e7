"""The loop guard on the real default model: an answer that falls into a loop under greedy decoding
is ended early in the library, the chat command and the server (streamed and not); an answer that
was asked to repeat itself is not cut."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest
from helpers import GREEDY, GREEDY_FLAGS, terminal

pytestmark = pytest.mark.slow

BUDGET = 300
# Prompts on which SmolLM2-135M-Instruct's greedy answer loops to any budget (benchmarks/loops.py).
# Precision differs by CPU and path, so each test takes the first one that loops where it runs.
LOOPING = ["What is 9 times 8?", "Who wrote the play Romeo and Juliet?", "List the steps to make a cup of tea."]
ASKED = "Write the word 'yes' 30 times, separated by spaces."


def first_that_loops_on(server) -> str:
    """The first looping prompt whose greedy, unguarded answer from `server` fills the budget."""

    def tokens(prompt: str) -> int:
        body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": BUDGET, "loop_guard": False,
                **GREEDY}
        return httpx.post(server.base_url + "/v1/chat/completions", json=body, timeout=300).json()["usage"][
            "completion_tokens"]

    return _first_that_loops(tokens)


def _first_that_loops(answer_tokens) -> str:
    """The first prompt whose unguarded answer fills the whole budget."""
    for prompt in LOOPING:
        if answer_tokens(prompt) >= BUDGET:
            return prompt
    pytest.fail(f"none of {LOOPING} loops here without the guard: find another (benchmarks/loops.py)")


def _unguarded_tokens(model):
    def tokens(prompt: str) -> int:
        *_, last = model.stream_generate(prompt, max_new_tokens=BUDGET, loop_guard=False)
        return last.token_count

    return tokens


def test_the_library_ends_a_loop_and_leaves_an_asked_repetition(smollm2):
    prompt = _first_that_loops(_unguarded_tokens(smollm2))
    pieces = list(smollm2.stream_generate(prompt, max_new_tokens=BUDGET))
    last = pieces[-1]
    assert last.stopped_loop and last.finish_reason == "stop" and last.token_count < BUDGET * 2 // 3
    # What was asked for goes through whole, as it does without the guard.
    assert smollm2.generate(ASKED, max_new_tokens=BUDGET) == smollm2.generate(ASKED, max_new_tokens=BUDGET,
                                                                            loop_guard=False)


def test_the_chat_command_and_its_repl_say_they_stopped_a_repeating_answer(smollm2_ov, smollm2):
    def chat(prompt: str, *flags: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "ovchat.cli", "chat", "--model", str(smollm2_ov), "--max-new-tokens", str(BUDGET),
             *GREEDY_FLAGS, *flags],
            input=prompt + "\n", capture_output=True, text=True, timeout=300,
        )

    prompt = _first_that_loops(_unguarded_tokens(smollm2))
    guarded, plain = chat(prompt), chat(prompt, "--no-loop-guard")
    assert guarded.returncode == 0 and plain.returncode == 0, guarded.stderr + plain.stderr
    assert "[stopped a repeating answer]" in guarded.stderr and "repeating" not in plain.stderr
    assert len(guarded.stdout) < len(plain.stdout) * 2 // 3

    # The REPL in a real terminal: the note, then the session goes on with the answer in its history.
    import pexpect

    child = terminal("-m", "ovchat.cli", "chat", "--model", str(smollm2_ov), "--max-new-tokens", str(BUDGET),
                     *GREEDY_FLAGS)
    child.expect(">>> ")
    child.sendline(prompt)
    child.expect(r"\[stopped a repeating answer\]")
    child.expect(">>> ")
    child.sendline("/stats")
    child.expect(r"answer (\d+) tokens")
    assert int(child.match.group(1)) < BUDGET * 2 // 3
    child.expect(">>> ")
    child.sendline("/exit")
    child.expect(pexpect.EOF)
    assert child.proc.wait(60) == 0


def test_the_server_ends_a_loop_streamed_or_not_and_counts_it(server):
    url = server.base_url + "/v1/chat/completions"

    prompt = first_that_loops_on(server)

    def ask(prompt: str, **extra) -> dict:
        body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": BUDGET, **GREEDY, **extra}
        return httpx.post(url, json=body, timeout=300).json()

    before = server.metric("ovchat_loops_stopped_total")
    whole = ask(prompt)
    assert whole["choices"][0]["finish_reason"] == "stop" and whole["usage"]["completion_tokens"] < BUDGET * 2 // 3
    assert whole["choices"][0]["stopped_by"] == "loop_guard"
    body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": BUDGET, "stream": True, **GREEDY}
    with httpx.stream("POST", url, json=body, timeout=300) as response:
        lines = [line[6:] for line in response.iter_lines() if line.startswith("data: ") and line != "data: [DONE]"]
    chunks = [json.loads(line) for line in lines]
    streamed = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert streamed == whole["choices"][0]["message"]["content"]
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"][0]["finish_reason"]] == ["stop"]
    assert server.metric("ovchat_loops_stopped_total") == before + 2
