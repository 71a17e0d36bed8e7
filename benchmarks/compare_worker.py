"""One engine, one process: time the prompts a spec file gives, print one JSON line.

Run by benchmarks/compare.py, once per engine and round, so every engine starts cold, has the
machine to itself and reports its own peak RSS. It imports nothing from ovchat at module level, so
it also runs under llama-cpp-python's own interpreter.

Every engine gets the same token ids, generates exactly `new_tokens` greedily (end-of-sequence
ignored) and is timed the same way from outside: time to first token = call → first new token;
decode rate = (new_tokens - 1) / (last token - first token).
"""

from __future__ import annotations

import json
import resource
import sys
import time


class Clock:
    """Timestamps of the new tokens of one generation."""

    def __init__(self):
        self.start = time.perf_counter()
        self.stamps: list[float] = []

    def tick(self, count: int = 1) -> None:
        now = time.perf_counter()
        self.stamps += [now] * count

    def result(self, expected: int) -> tuple[float, float]:
        if len(self.stamps) != expected:
            raise RuntimeError(f"expected {expected} new tokens, the engine gave {len(self.stamps)}")
        ttft = (self.stamps[0] - self.start) * 1000
        decode = (expected - 1) / (self.stamps[-1] - self.stamps[0])
        return ttft, decode


def ovchat_engine(spec: dict):
    import ovchat

    model = ovchat.load(spec["model"], config=spec.get("config") or None)
    RAN_WITH["precision"] = str(model.precision)

    def generate(ids: list[int]) -> Clock:
        clock = Clock()
        model.timed_generate(ids, spec["new_tokens"], on_tokens=clock.tick)
        return clock

    return generate


def _transformers_generate(model, new_tokens: int):
    import torch
    from transformers.generation.streamers import BaseStreamer

    class Streamer(BaseStreamer):
        def __init__(self, clock: Clock):
            self.clock, self.prompt_seen = clock, False

        def put(self, value):
            if not self.prompt_seen:  # generate() hands over the prompt first
                self.prompt_seen = True
                return
            self.clock.tick(value.numel())

        def end(self):
            pass

    def generate(ids: list[int]) -> Clock:
        clock = Clock()
        inputs = torch.tensor([ids], dtype=torch.long)
        with torch.inference_mode():
            model.generate(
                input_ids=inputs,
                attention_mask=torch.ones_like(inputs),
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,  # end-of-sequence ignored
                do_sample=False,
                streamer=Streamer(clock),
                pad_token_id=0,
            )
        return clock

    return generate


def optimum_engine(spec: dict):
    """The sample's path: optimum-intel's OVModelForCausalLM with the sample's latency config."""
    from optimum.intel import OVModelForCausalLM

    config = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", "CACHE_DIR": spec["cache_dir"]}
    model = OVModelForCausalLM.from_pretrained(spec["model"], ov_config=config, device="CPU")
    from ovchat.precision import reported

    ran = reported(model.request.get_compiled_model())  # OpenVINO's own choice: the sample sets none
    RAN_WITH["precision"] = f"{ran['inference']} inference, {ran['kv_cache']} KV cache"
    return _transformers_generate(model, spec["new_tokens"])


def torch_engine(spec: dict):
    """The unoptimised baseline: transformers + PyTorch, fp32."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(spec["threads"])
    RAN_WITH["precision"] = "f32"
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32).eval()
    return _transformers_generate(model, spec["new_tokens"])


def llama_engine(spec: dict):
    from llama_cpp import Llama

    longest = max(int(n) for n in spec["prompts"]) + spec["new_tokens"]
    llm = Llama(
        model_path=spec["model"],
        n_threads=spec["threads"],
        n_threads_batch=spec["threads"],
        n_ctx=max(512, longest + 16),
        n_batch=512,
        verbose=False,
    )

    def generate(ids: list[int]) -> Clock:
        llm.reset()
        clock = Clock()
        for count, _ in enumerate(llm.generate(ids, temp=0.0, top_k=1, reset=True), start=1):
            clock.tick()
            if count == spec["new_tokens"]:
                break
        return clock

    return generate


def peak_rss_mb() -> float:
    """This process's peak resident memory. (Not getrusage: Linux carries its maximum across exec,
    so a worker would report its parent's peak when that was higher.)"""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


RAN_WITH: dict[str, str] = {}  # what an engine reports of itself: the precision it runs with
ENGINES = {"ovchat": ovchat_engine, "optimum": optimum_engine, "torch": torch_engine, "llama.cpp": llama_engine}


def main() -> None:
    spec = json.loads(open(sys.argv[1]).read())
    started = time.perf_counter()
    generate = ENGINES[spec["engine"]](spec)
    load_s = time.perf_counter() - started
    rows = []
    for length, prompts in spec["prompts"].items():
        ttft, decode = [], []
        for i, ids in enumerate(prompts):
            assert len(ids) == int(length)
            t, d = generate(ids).result(spec["new_tokens"])
            if i >= spec["warmup"]:
                ttft.append(t)
                decode.append(d)
        rows.append({"prompt_tokens": int(length), "ttft_ms": ttft, "decode_tok_s": decode})
    peak = peak_rss_mb()
    print(json.dumps({"load_s": load_s, "rows": rows, "peak_rss_mb": peak, **RAN_WITH}))


if __name__ == "__main__":
    main()
