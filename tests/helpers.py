"""Helpers shared by the tests."""

from __future__ import annotations

import os
import subprocess
import sys


def run_cli(*args: str, env: dict | None = None, timeout: float = 600):
    """Run the real `ovchat` command in a child process."""
    return subprocess.run(
        [sys.executable, "-m", "ovchat.cli", *args],
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
