"""Prometheus text exposition for the server: a few counters, gauges and histograms, no dependency."""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Callable

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Histogram:
    def __init__(self, name: str, help_text: str, buckets=LATENCY_BUCKETS):
        self.name, self.help, self.buckets = name, help_text, buckets
        self.counts = [0] * (len(buckets) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value

    def lines(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        running = 0
        for bound, count in zip(self.buckets, self.counts, strict=False):
            running += count
            out.append(f'{self.name}_bucket{{le="{bound}"}} {running}')
        running += self.counts[-1]
        out += [
            f'{self.name}_bucket{{le="+Inf"}} {running}',
            f"{self.name}_sum {self.total:.6f}",
            f"{self.name}_count {running}",
        ]
        return out


class Metrics:
    """What /metrics reports. Counters are bumped on the event loop; gauges are read when scraped."""

    def __init__(self, gauges: dict[str, tuple[str, Callable[[], float]]]):
        self.gauges = gauges
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.counters = {
            "ovchat_prompt_tokens_total": ["Prompt tokens of admitted requests.", 0],
            "ovchat_generation_tokens_total": ["Tokens generated.", 0],
            "ovchat_requests_cancelled_total": ["Generations stopped because the client left.", 0],
            "ovchat_loops_stopped_total": ["Answers the loop guard ended: they had started repeating themselves.", 0],
            "ovchat_model_loads_total": ["Models loaded (at start, on demand, or after their engine ended).", 0],
        }
        # Per-model values read when scraped: name -> (help, type, read() -> {model: value}).
        self.per_model: dict[str, tuple[str, str, Callable[[], dict]]] = {}
        self.ttft = Histogram("ovchat_time_to_first_token_seconds", "From arrival to the first token.")
        self.tpot = Histogram("ovchat_time_per_output_token_seconds", "Mean time between tokens, per request.")

    def count(self, name: str, value: int = 1) -> None:
        self.counters[name][1] += value

    def request(self, path: str, status: int) -> None:
        self.requests[(path, status)] += 1

    def render(self) -> str:
        out = ["# HELP ovchat_requests_total HTTP requests by path and status.", "# TYPE ovchat_requests_total counter"]
        out += [f'ovchat_requests_total{{path="{p}",status="{s}"}} {n}' for (p, s), n in sorted(self.requests.items())]
        for name, (help_text, value) in self.counters.items():
            out += [f"# HELP {name} {help_text}", f"# TYPE {name} counter", f"{name} {value}"]
        for name, (help_text, read) in self.gauges.items():
            out += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {read()}"]
        for name, (help_text, kind, read) in self.per_model.items():
            out += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
            out += [f'{name}{{model="{model}"}} {value}' for model, value in sorted(read().items())]
        out += self.ttft.lines() + self.tpot.lines()
        return "\n".join(out) + "\n"
