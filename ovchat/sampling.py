"""How to pick tokens: one frozen `SamplingParams`, its one conversion to OpenVINO GenAI's
GenerationConfig, and the stop-string matcher. The library, the chat session, the benchmark and the
server's engine process all generate through these; the server's request models build a
SamplingParams themselves.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, fields

from .config import DEFAULT_MAX_NEW_TOKENS, PROMPT_LOOKUP_NGRAM, PROMPT_LOOKUP_TOKENS
from .errors import OvchatError

MAX_STOP_STRINGS = 4  # as OpenAI's API


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens. temperature 0 is greedy; top_k 0 means no limit; `stop` strings end the
    answer (and are not part of it); `json_schema` (a JSON text) constrains the answer to it."""

    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    json_schema: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        elif not isinstance(self.stop, tuple):
            object.__setattr__(self, "stop", tuple(self.stop))
        number = (int, float)
        checks = [
            ("max_new_tokens", isinstance(self.max_new_tokens, int) and self.max_new_tokens > 0, "a positive integer"),
            ("temperature", isinstance(self.temperature, number) and 0 <= self.temperature <= 2, "between 0 and 2"),
            ("top_p", isinstance(self.top_p, number) and 0 < self.top_p <= 1, "in (0, 1]"),
            ("top_k", isinstance(self.top_k, int) and self.top_k >= 0, "0 (no limit) or a positive integer"),
            ("repetition_penalty", isinstance(self.repetition_penalty, number) and self.repetition_penalty > 0,
             "positive"),
            ("presence_penalty", isinstance(self.presence_penalty, number) and -2 <= self.presence_penalty <= 2,
             "between -2 and 2"),
            ("frequency_penalty", isinstance(self.frequency_penalty, number) and -2 <= self.frequency_penalty <= 2,
             "between -2 and 2"),
            ("seed", self.seed is None or isinstance(self.seed, int), "an integer or None"),
            ("stop", len(self.stop) <= MAX_STOP_STRINGS and all(isinstance(s, str) and s for s in self.stop),
             f"up to {MAX_STOP_STRINGS} non-empty strings"),
            ("json_schema", self.json_schema is None or isinstance(self.json_schema, str), "a JSON text or None"),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise OvchatError(f"{name} must be {rule}, not {getattr(self, name)!r}")

    @classmethod
    def of(cls, **sampling) -> SamplingParams:
        """From keyword arguments, refusing unknown names as a function call would."""
        unknown = set(sampling) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"unknown sampling parameters: {', '.join(sorted(unknown))}")
        return cls(**sampling)


def generation_config(
    params: SamplingParams,
    stop_token_ids: Collection[int],
    *,
    max_new_tokens: int | None = None,
    prompt_lookup: bool = False,
    apply_chat_template: bool = False,
):
    """OpenVINO GenAI's GenerationConfig for `params` (the one translation). `max_new_tokens` overrides
    the params' budget (what is left of the context, or of a resumed request). Stop strings are not
    here: whoever turns tokens into text cuts it with a StopMatcher, so no part of one is ever shown."""
    import openvino_genai as ov_genai

    config = ov_genai.GenerationConfig()
    config.max_new_tokens = params.max_new_tokens if max_new_tokens is None else max_new_tokens
    config.apply_chat_template = apply_chat_template
    config.stop_token_ids = set(stop_token_ids)
    config.repetition_penalty = params.repetition_penalty
    config.presence_penalty = params.presence_penalty
    config.frequency_penalty = params.frequency_penalty
    if prompt_lookup:
        config.num_assistant_tokens = PROMPT_LOOKUP_TOKENS
        config.max_ngram_size = PROMPT_LOOKUP_NGRAM
    if params.temperature > 0:
        config.do_sample = True
        config.temperature = params.temperature
        config.top_p = params.top_p
        if params.top_k:
            config.top_k = params.top_k
        if params.seed is not None:
            config.rng_seed = params.seed
    if params.json_schema is not None:
        config.structured_output_config = ov_genai.StructuredOutputConfig(json_schema=params.json_schema)
    return config


class StopMatcher:
    """Cuts text at the first stop string, holding back any tail that could still become one."""

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.pending = ""
        self.stopped = False

    def push(self, text: str) -> str:
        """The text that is safe to emit now; after a stop string, nothing more."""
        if self.stopped or not self.stops:
            return "" if self.stopped else text
        self.pending += text
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.stopped = True
            out, self.pending = self.pending[: min(hits)], ""
            return out
        cut = max(len(self.pending) - self.hold, 0)
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return "" if self.stopped else out
