"""Helpers shared by the tests."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path


def run_cli(*args: str, env: dict | None = None, timeout: float = 600, input: str | None = None):
    """Run the real `ovchat` command in a child process (stdin: `input`, else nothing)."""
    return subprocess.run(
        [sys.executable, "-m", "ovchat.cli", *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


class Server:
    """A real `ovchat serve` child process on a free loopback port."""

    def __init__(self, model, *args: str, log_path, env: dict | None = None, ready: bool = True):
        import re
        import time

        self.log_path = log_path
        self._log = open(log_path, "w")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ovchat.cli", "serve", "--model", str(model), "--port", "0", *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        deadline = time.monotonic() + 180
        while not (found := re.search(r"http://(\S+?):(\d+)/v1", self.log())):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ovchat serve did not start:\n{self.log()}")
            time.sleep(0.05)
        self.host, self.port = found.group(1), int(found.group(2))
        self.base_url = f"http://{self.host}:{self.port}"
        if ready:
            self.wait_ready(deadline)

    def log(self) -> str:
        with open(self.log_path) as f:
            return f.read()

    def wait_ready(self, deadline: float) -> None:
        import time

        import httpx

        while True:
            try:
                if httpx.get(self.base_url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ovchat serve never became ready:\n{self.log()}")
            time.sleep(0.1)

    def client(self, **kwargs):
        import openai

        return openai.OpenAI(base_url=self.base_url + "/v1", api_key=kwargs.pop("api_key", "unused"), max_retries=0,
                             **kwargs)

    def metric(self, name: str, headers: dict | None = None) -> float:
        import httpx

        text = httpx.get(self.base_url + "/metrics", headers=headers).text
        return sum(float(line.split()[-1]) for line in text.splitlines() if line.split(" ")[0].split("{")[0] == name)

    def stop(self, timeout: float = 60) -> int:
        import signal

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


EIGHT_PROMPTS = ["What is the capital of France?", "Write a haiku about the sea.", "Count from 1 to 10.",
                 "Tell me a joke about cats.", "Explain gravity in one sentence.", "List three colors.",
                 "What is 2+2?", "Name a famous painter."]


# Plain greedy decoding, as `ovchat generate` answers: chat, the server and the page otherwise sample as
# the model recommends (ovchat.runtime.recommended_sampling), a repetition penalty included.
GREEDY = {"temperature": 0, "repetition_penalty": 1.0}
GREEDY_FLAGS = ("--temperature", "0", "--repetition-penalty", "1")
GREEDY_KWARGS = {"temperature": 0, "extra_body": {"repetition_penalty": 1.0}}  # for the openai client


def answers_alone_and_together(server: Server, prompts: list[str], max_tokens: int = 32) -> tuple[dict, dict]:
    """Each prompt's greedy (text, completion tokens) asked alone, then all streamed at once."""
    import threading

    client = server.client()
    model = client.models.list().data[0].id
    solo = {}
    for p in prompts:
        answer = client.chat.completions.create(model=model, messages=[{"role": "user", "content": p}],
                                                max_tokens=max_tokens, **GREEDY_KWARGS)
        solo[p] = (answer.choices[0].message.content, answer.usage.completion_tokens)
    together: dict[str, tuple[str, int]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(len(prompts))

    def ask(p: str) -> None:
        try:
            start.wait()
            stream = client.chat.completions.create(model=model, messages=[{"role": "user", "content": p}],
                                                    max_tokens=max_tokens, stream=True, **GREEDY_KWARGS,
                                                    stream_options={"include_usage": True})
            chunks = list(stream)
            together[p] = ("".join(c.choices[0].delta.content or "" for c in chunks if c.choices),
                           chunks[-1].usage.completion_tokens)
        except BaseException as exc:  # noqa: BLE001 (raised below)
            errors.append(exc)

    threads = [threading.Thread(target=ask, args=(p,)) for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    if errors:
        raise errors[0]
    return solo, together


def copying_converter(prebuilt, pause: float = 0.0):
    """An export converter (ovchat.build.export.Converter) that copies an exported folder's files and
    then waits `pause` seconds: everything around conversion (room, lock, self-check on OpenVINO,
    manifest, atomic publish, kills) runs for real, without optimum-intel's minute."""
    import shutil
    import time
    from pathlib import Path

    from ovchat.catalog import MANIFEST_NAME

    def convert(source_dir, out_dir, recipe, log_path, log) -> None:
        for item in Path(prebuilt).iterdir():
            if item.is_file() and item.name != MANIFEST_NAME:
                shutil.copy2(item, Path(out_dir) / item.name)
        time.sleep(pause)

    return convert


def sse_payloads(body: str) -> list[str]:
    """The data payloads of an SSE body (without the final [DONE]), checking its framing on the way."""
    assert body.endswith("data: [DONE]\n\n")
    payloads = []
    for block in body.split("\n\n")[:-2]:  # the last two: [DONE] and the empty tail
        if block.startswith(":"):  # a keep-alive comment
            continue
        assert block.startswith("data: ") and "\n" not in block, block
        payloads.append(block[6:])
    return payloads


def write_mamba_gguf(path) -> None:
    """A GGUF file of an architecture ovchat does not convert (mamba)."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "mamba")
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def terminal(*args: str, timeout: float = 300, rows: int = 50, cols: int = 200):
    """`python ARGS` on a pseudo-terminal, for pexpect. Started by subprocess, whose fork and exec run in
    C: pexpect's own spawn runs Python between the two, which crashed children (SIGSEGV, no output) when
    this test process held OpenVINO's threads (a model loaded in-process). `.proc` is the Popen."""
    import fcntl
    import pty
    import struct
    import termios

    from pexpect import fdpexpect

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    proc = subprocess.Popen([sys.executable, *args], stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
    os.close(slave)
    child = fdpexpect.fdspawn(master, encoding="utf-8", timeout=timeout)
    child.proc = proc
    return child


def headers_only(folder: Path, shapes: dict[str, list[int]], dtype: str = "BF16") -> Path:
    """A safetensors file holding only its header: what the estimate reads, without gigabytes of weights."""
    folder.mkdir(parents=True, exist_ok=True)
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = 2
        for dim in shape:
            size *= dim
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw)
    return folder


def phi3_mini_shapes() -> dict[str, list[int]]:
    """Phi-3-mini-4k-instruct's tensors: 32 layers, hidden 3072, intermediate 8192, vocab 32064."""
    shapes = {"model.embed_tokens.weight": [32064, 3072], "lm_head.weight": [32064, 3072], "model.norm.weight": [3072]}
    for i in range(32):
        p = f"model.layers.{i}."
        shapes |= {
            p + "self_attn.qkv_proj.weight": [9216, 3072],
            p + "self_attn.o_proj.weight": [3072, 3072],
            p + "mlp.gate_up_proj.weight": [16384, 3072],
            p + "mlp.down_proj.weight": [3072, 8192],
            p + "input_layernorm.weight": [3072],
            p + "post_attention_layernorm.weight": [3072],
        }
    return shapes
