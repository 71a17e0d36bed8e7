"""`ovchat chat` in a real terminal (pexpect), the context policy, KV reuse by counts, piped stdin."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import pexpect
import pytest
from helpers import GREEDY_FLAGS

from ovchat import OvchatError, SamplingParams
from ovchat.sampling import CHAT_SAMPLING
from ovchat.session import ChatSession

PROMPT = ">>> "


def spawn(*args: str, timeout: float = 120, preexec_fn=None) -> pexpect.spawn:
    child = pexpect.spawn(
        sys.executable,
        ["-m", "ovchat.cli", "chat", *args],
        encoding="utf-8",
        timeout=timeout,
        dimensions=(50, 200),
        env={**os.environ, "TERM": "dumb"},
        preexec_fn=preexec_fn,
    )
    child.expect(PROMPT)
    child.banner = child.before  # what it says before the first prompt
    return child


def say(child: pexpect.spawn, text: str) -> str:
    """Send a line, wait for the next prompt, return what was printed in between (without the echo)."""
    child.sendline(text)
    child.expect(PROMPT)
    return child.before.replace("\r\n", "\n").split("\n", 1)[-1]


def ends_cleanly(child: pexpect.spawn) -> int:
    child.expect(pexpect.EOF)
    child.close()
    return child.exitstatus


# --- the real small model, in a real terminal -------------------------------------------------


@pytest.mark.slow
def test_conversation_in_a_terminal(smollm2_ov, tmp_path):
    child = spawn("--model", str(smollm2_ov), "--max-new-tokens", "48", *GREEDY_FLAGS)
    assert "sampling: greedy (as asked)" in child.banner
    say(child, "Hi! I am Ada Lovelace.")  # a wording the 135M default export follows
    assert "Ada" in say(child, "What is my name?")  # the second turn sees the first
    stats = say(child, "/stats")
    assert "cached" in stats and "first token" in stats and "tok/s" in stats
    assert "unknown command /frobnicate" in say(child, "/frobnicate")  # a hint, not a model call
    transcript = tmp_path / "ada.json"
    assert "saved 4 messages" in say(child, f"/save {transcript}")
    assert "conversation cleared" in say(child, "/reset")
    assert "Ada" not in say(child, "What is my name?")  # forgotten
    assert "loaded 4 messages" in say(child, f"/load {transcript}")
    assert "Ada" in say(child, "What is my name?")  # remembered again from the file
    saved = json.loads(transcript.read_text())
    assert [m["role"] for m in saved] == ["user", "assistant", "user", "assistant"]
    assert saved[0]["content"] == "Hi! I am Ada Lovelace."
    child.sendeof()
    assert ends_cleanly(child) == 0


@pytest.mark.slow
def test_ctrl_c_stops_an_answer_and_the_session_goes_on(smollm2_ov, tmp_path):
    child = spawn("--model", str(smollm2_ov), "--max-new-tokens", "1024", *GREEDY_FLAGS)
    child.sendline("Write a very long story about a cat who travels around the world.")
    child.expect("around the world.\r\n")  # the echo of the question
    child.expect(r"\w+ \w+ \w+ \w+ \w+ \w+")  # then some of the answer has streamed
    child.sendintr()
    child.expect(PROMPT)
    assert "answer stopped" in child.before
    stats = say(child, "/stats")
    assert "cut" in stats
    assert "Paris" in say(child, "What is the capital of France?")
    cached = int(re.search(r"\((\d+) cached", say(child, "/stats")).group(1))
    assert cached > 20  # the cut answer stayed in the cache: only the new question was read
    transcript = tmp_path / "cut.json"
    say(child, f"/save {transcript}")
    saved = json.loads(transcript.read_text())
    assert saved[1]["role"] == "assistant" and saved[1]["cut"] is True and saved[1]["content"]
    assert "cut" not in saved[3]
    child.sendintr()  # Ctrl-C at an empty prompt leaves
    assert ends_cleanly(child) == 0


@pytest.mark.slow
def test_kv_cache_is_reused_across_turns(smollm2):
    session = ChatSession(smollm2, system="You are a helpful assistant.", sampling=SamplingParams(max_new_tokens=16))
    notes = "Here are my notes. " + "The quick brown fox jumps over the lazy dog. " * 60
    list(session.send(notes))
    first = session.stats
    assert first.prompt_tokens > 600
    list(session.send("Thanks. What animal jumps?"))
    second = session.stats
    new_message = smollm2.count_tokens("Thanks. What animal jumps?", add_special_tokens=False)
    # Only the new message and the template tokens around the turns are read; the long first turn is not.
    assert second.cached_tokens >= first.prompt_tokens
    assert second.prompt_tokens - second.cached_tokens <= new_message + 12
    assert second.dropped_turns == 0 and not second.cut


@pytest.mark.slow
def test_piped_stdin_prints_only_the_answer(smollm2_ov):
    done = subprocess.run(
        [sys.executable, "-m", "ovchat.cli", "chat", "--model", str(smollm2_ov), "--max-new-tokens", "32",
         *GREEDY_FLAGS],
        input="What is the capital of France?\n",
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "Paris" in done.stdout and ">>>" not in done.stdout and "ovchat ·" not in done.stdout


# --- the tiny Phi-3 (context 256): the context policy -------------------------------------------


def test_context_policy_keeps_the_system_prompt(tiny_model):
    session = ChatSession(tiny_model, system="You are terse.", sampling=SamplingParams(max_new_tokens=16))
    dropped = 0
    for i in range(12):  # each turn is ~60 tokens: the 256-token window overflows again and again
        stream = session.send(f"message {i}: " + "hello there " * 8)
        dropped += session.stats.dropped_turns
        assert "".join(c.text for c in stream) == "Hello world!"
        sent = tiny_model.tokenizer.decode(tiny_model._kv_ids, skip_special_tokens=False)  # what the pipeline got
        assert sent.startswith("<|system|>\nYou are terse.<|end|>") and f"message {i}:" in sent
        assert session.messages[-2]["content"].startswith(f"message {i}:")
    assert dropped > 0
    assert session.messages[0]["role"] == "user"  # whole turns are dropped, oldest first


def test_a_session_samples_as_the_model_recommends_unless_told(tiny_model):
    assert ChatSession(tiny_model).sampling == tiny_model.chat_sampling  # generate's default stays greedy
    assert tiny_model.chat_sampling != SamplingParams() and tiny_model.chat_sampling.temperature > 0
    assert ChatSession(tiny_model, sampling=SamplingParams()).sampling == SamplingParams()
    assert "".join(c.text for c in ChatSession(tiny_model).send("Hi")) == "Hello world!"


def test_oversize_message_is_an_error_and_the_session_goes_on(tiny_model):
    session = ChatSession(tiny_model, sampling=SamplingParams(max_new_tokens=16))
    list(session.send("Hi"))
    with pytest.raises(OvchatError, match=r"this message is \d+ tokens; the context holds 256"):
        session.send("hello " * 300)
    assert len(session.messages) == 2  # untouched
    assert "".join(c.text for c in session.send("Hi again")) == "Hello world!"


@pytest.mark.slow  # a real terminal or child process
def test_repl_notices_drops_and_errors(tiny_phi3_ov):
    child = spawn("--model", str(tiny_phi3_ov), "--max-new-tokens", "16", "--system", "Be brief.", "--verbose")
    recommended = SamplingParams(**CHAT_SAMPLING).summary()
    assert f"sampling: {recommended} (ovchat's default)" in child.banner  # what a chat samples with, and why
    outputs = [say(child, "hello there " * 10 + str(i)) for i in range(8)]
    assert all("Hello world!" in out for out in outputs)
    assert any("[context full: dropped the" in out for out in outputs)
    assert "[prompt " in outputs[-1]  # --verbose stats line
    error = say(child, "hello " * 300)
    assert "error: this message with the system prompt is" in error and "the context holds 256" in error
    assert "Hello world!" in say(child, "Hi")  # and the session goes on
    assert "system prompt: 'Be brief.'" in say(child, "/system")
    assert "system prompt removed" in say(child, "/system -")
    assert "no system prompt" in say(child, "/system")
    child.sendline("/exit")
    assert ends_cleanly(child) == 0


@pytest.mark.slow  # a real terminal or child process
def test_multi_line_input_and_slash_escape(tiny_phi3_ov, tmp_path):
    child = spawn("--model", str(tiny_phi3_ov))
    child.sendline("first line \\")
    child.expect(r"\.\.\. ")
    assert "Hello world!" in say(child, "second line")
    child.sendline('"""')
    child.expect(r"\.\.\. ")
    child.sendline("a block")
    child.expect(r"\.\.\. ")
    assert "Hello world!" in say(child, 'of text"""')
    assert "Hello world!" in say(child, "//etc is a folder")
    say(child, f"/save {tmp_path / 't.json'}")
    users = [m["content"] for m in json.loads((tmp_path / "t.json").read_text()) if m["role"] == "user"]
    assert users == ["first line \nsecond line", "a block\nof text", "/etc is a folder"]
    child.send("half a mess")
    child.expect("half a mess")  # echoed: the line editor holds it
    child.sendintr()  # Ctrl-C on a half-typed line drops it and keeps the session
    child.expect(PROMPT)
    child.sendeof()
    assert ends_cleanly(child) == 0


@pytest.mark.slow  # a real terminal or child process
def test_ctrl_c_works_when_started_with_sigint_ignored(tiny_phi3_ov):
    # A background job of a script starts with SIGINT ignored; the chat must still hear Ctrl-C.
    child = spawn(
        "--model", str(tiny_phi3_ov), timeout=30, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)
    )
    child.send("half a line")
    child.expect("half a line")
    child.sendintr()
    child.expect(PROMPT)
    child.sendintr()  # at an empty prompt: leaves
    assert ends_cleanly(child) == 0


@pytest.mark.slow  # a real terminal or child process
def test_bad_transcript_is_an_error_not_a_crash(tiny_phi3_ov, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('[{"role": "wizard", "content": "x"}]')
    unordered = tmp_path / "unordered.json"
    unordered.write_text('[{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]')
    child = spawn("--model", str(tiny_phi3_ov))
    assert "message 0 needs a role" in say(child, f"/load {bad}")
    assert "must alternate user, assistant" in say(child, f"/load {unordered}")
    assert "cannot read" in say(child, f"/load {tmp_path / 'missing.json'}")
    assert "Hello world!" in say(child, "Hi")
    child.sendline("/exit")
    assert ends_cleanly(child) == 0


@pytest.mark.slow  # a real terminal or child process
def test_piped_stdin_on_tiny(tiny_phi3_ov):
    def pipe(text: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "ovchat.cli", "chat", "--model", str(tiny_phi3_ov)]
        return subprocess.run(command, input=text, capture_output=True, text=True, timeout=120)

    done = pipe("Hi\n")
    assert (done.returncode, done.stdout) == (0, "Hello world!\n")
    empty = pipe("")
    assert empty.returncode == 1 and "no message on standard input" in empty.stderr
