"""How to pick tokens: one frozen `SamplingParams`, its one conversion to OpenVINO GenAI's
GenerationConfig, and the stop-string matcher. The library, the chat session, the benchmark and the
server's engine process all generate through these; the server's request models build a
SamplingParams themselves.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Collection, Sequence
from dataclasses import dataclass, fields

from .config import DEFAULT_MAX_NEW_TOKENS, PROMPT_LOOKUP_NGRAM, PROMPT_LOOKUP_TOKENS
from .errors import OvchatError

MAX_STOP_STRINGS = 4  # as OpenAI's API
MAX_TOP_LOGPROBS = 20  # as OpenAI's API
# What a chat starts from when neither the model's generation_config.json nor its catalog entry
# recommends sampling. Chosen on SmolLM2-135M's answers (benchmarks/loops.py, docs/quality.md):
# greedy loops in a third of them; Ollama's 0.8 drifts off topic; this loops least and stays on it.
CHAT_SAMPLING = {"temperature": 0.5, "top_p": 0.9, "top_k": 40, "repetition_penalty": 1.1}
# The fields a model's recommendation may set (the rest keep SamplingParams' defaults).
RECOMMENDED_FIELDS = ("temperature", "top_p", "top_k", "repetition_penalty")


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens. temperature 0 is greedy; top_k 0 means no limit; seed None samples differently
    each time; `stop` strings end the
    answer (and are not part of it); `json_schema` (a JSON text) constrains the answer to it, as does
    `grammar` (EBNF in XGrammar's dialect, see ovchat.grammar);
    `no_repeat_ngram_size` N forbids any N tokens in a row twice (0: off); `loop_guard` ends an
    answer that has started repeating itself (see LoopGuard; not with a JSON schema, whose grammar
    shapes the answer and whose cut would not parse); `logprobs` returns each token's log-probability,
    `top_logprobs` the N most likely tokens beside it (up to MAX_TOP_LOGPROBS)."""

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
    no_repeat_ngram_size: int = 0
    grammar: str | None = None
    loop_guard: bool = True
    logprobs: bool = False
    top_logprobs: int = 0
    tool_tags: str | None = None  # structural tags as JSON (see ovchat.tool_formats): free text, constrained calls

    def __post_init__(self) -> None:
        if self.stop is None:
            object.__setattr__(self, "stop", ())
        elif isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        elif not isinstance(self.stop, tuple):
            object.__setattr__(self, "stop", tuple(self.stop))
        number = (int, float)

        def integer(value) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        checks = [
            ("max_new_tokens", integer(self.max_new_tokens) and self.max_new_tokens > 0, "a positive integer"),
            ("temperature", isinstance(self.temperature, number) and 0 <= self.temperature <= 2, "between 0 and 2"),
            ("top_p", isinstance(self.top_p, number) and 0 < self.top_p <= 1, "in (0, 1]"),
            ("top_k", integer(self.top_k) and self.top_k >= 0, "0 (no limit) or a positive integer"),
            ("repetition_penalty", isinstance(self.repetition_penalty, number) and self.repetition_penalty > 0,
             "positive"),
            ("presence_penalty", isinstance(self.presence_penalty, number) and -2 <= self.presence_penalty <= 2,
             "between -2 and 2"),
            ("frequency_penalty", isinstance(self.frequency_penalty, number) and -2 <= self.frequency_penalty <= 2,
             "between -2 and 2"),
            ("seed", self.seed is None or integer(self.seed), "an integer or None"),
            ("stop", len(self.stop) <= MAX_STOP_STRINGS and all(isinstance(s, str) and s for s in self.stop),
             f"up to {MAX_STOP_STRINGS} non-empty strings"),
            ("json_schema", self.json_schema is None or isinstance(self.json_schema, str), "a JSON text or None"),
            ("no_repeat_ngram_size", integer(self.no_repeat_ngram_size) and self.no_repeat_ngram_size >= 0,
             "0 (off) or a positive integer"),
            ("loop_guard", isinstance(self.loop_guard, bool), "True or False"),
            ("grammar", self.grammar is None or isinstance(self.grammar, str), "an EBNF text or None"),
            ("logprobs", isinstance(self.logprobs, bool), "True or False"),
            ("tool_tags", self.tool_tags is None or isinstance(self.tool_tags, str), "a JSON text or None"),
            ("top_logprobs", integer(self.top_logprobs) and 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS
             and (self.logprobs or not self.top_logprobs), f"0 to {MAX_TOP_LOGPROBS}, with logprobs"),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise OvchatError(f"{name} must be {rule}, not {getattr(self, name)!r}")

    @property
    def guards_loops(self) -> bool:
        """Whether the loop guard runs: asked for, and no grammar shapes the answer."""
        return self.loop_guard and not self.constrained

    @property
    def constrained(self) -> bool:
        """A JSON schema, a grammar or structural tags shape the answer."""
        return self.json_schema is not None or self.grammar is not None or self.tool_tags is not None

    def summary(self) -> str:
        """How tokens are picked, as a person reads it: "greedy" or "temperature 0.5, top-p 0.9, ..."."""
        parts = [f"temperature {self.temperature:g}", f"top-p {self.top_p:g}"] if self.temperature > 0 else ["greedy"]
        if self.temperature > 0 and self.top_k:
            parts.append(f"top-k {self.top_k}")
        if self.repetition_penalty != 1:
            parts.append(f"repetition penalty {self.repetition_penalty:g}")
        if self.no_repeat_ngram_size:
            parts.append(f"no repeated {self.no_repeat_ngram_size}-grams")
        return ", ".join(parts)

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
    the params' budget (what is left of the context, or of a resumed request). Stop strings and the
    loop guard are not here: whoever streams the tokens applies them (StopMatcher, LoopGuard)."""
    import openvino_genai as ov_genai

    config = ov_genai.GenerationConfig()
    config.max_new_tokens = params.max_new_tokens if max_new_tokens is None else max_new_tokens
    config.apply_chat_template = apply_chat_template
    config.stop_token_ids = set(stop_token_ids)
    config.repetition_penalty = params.repetition_penalty
    config.presence_penalty = params.presence_penalty
    if params.logprobs:
        config.logprobs = 1  # the chosen token's (GenAI returns no alternatives; see server/scorer.py)
    config.frequency_penalty = params.frequency_penalty
    if params.no_repeat_ngram_size:
        config.no_repeat_ngram_size = params.no_repeat_ngram_size
    if prompt_lookup:
        config.num_assistant_tokens = PROMPT_LOOKUP_TOKENS
        config.max_ngram_size = PROMPT_LOOKUP_NGRAM
    if params.temperature > 0:
        config.do_sample = True
        config.temperature = params.temperature
        config.top_p = params.top_p
        if params.top_k:
            config.top_k = params.top_k
        # Unseeded sampling differs from answer to answer (GenAI's own default seed is a constant).
        config.rng_seed = params.seed if params.seed is not None else secrets.randbits(63)
    if params.tool_tags is not None:
        config.structured_output_config = ov_genai.StructuredOutputConfig(compound_grammar=_tags(params.tool_tags))
    elif params.grammar is not None:
        config.structured_output_config = ov_genai.StructuredOutputConfig(grammar=params.grammar)
    elif params.json_schema is not None:
        config.structured_output_config = ov_genai.StructuredOutputConfig(json_schema=params.json_schema)
    return config


def _tags(spec: str):
    """GenAI's triggered structural tags from their JSON description (picklable, unlike the objects)."""
    import openvino_genai as ov_genai

    structured = ov_genai.StructuredOutputConfig
    spec = json.loads(spec)
    tags = [
        structured.Tag(tag["begin"], structured.EBNF(tag["grammar"]) if "grammar" in tag
                       else structured.JSONSchema(tag["json_schema"]), tag["end"])
        for tag in spec["tags"]
    ]
    return structured.TriggeredTags(spec["triggers"], tags, spec["at_least_one"], spec["stop_after_first"])


class StopMatcher:
    """Cuts text at the first stop string, holding back any tail that could still become one."""

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.pending = ""
        self.stopped = False
        self.matched: str | None = None  # the stop string that ended the text

    def push(self, text: str) -> str:
        """The text that is safe to emit now; after a stop string, nothing more."""
        if self.stopped or not self.stops:
            return "" if self.stopped else text
        self.pending += text
        hits = [(i, s) for s in self.stops if (i := self.pending.find(s)) >= 0]
        if hits:
            at, self.matched = min(hits, key=lambda hit: hit[0])
            self.stopped = True
            out, self.pending = self.pending[:at], ""
            return out
        cut = max(len(self.pending) - self.hold, 0)
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return "" if self.stopped else out


# The loop guard's thresholds, chosen on SmolLM2-135M's answers (benchmarks/loops.py, docs/quality.md):
LOOP_MAX_PERIOD = 128  # the longest repeating span looked for, in tokens
LOOP_REPEATS = 4  # how many times in a row a span must occur ...
LOOP_MIN_TOKENS = 96  # ... over at least this many tokens (so "yes" asked for 30 times goes through)
LOOP_MATCH = 0.8  # share of positions equal to the token one span earlier (counters and list numbers differ)


class LoopGuard:
    """Notices that an answer has started repeating itself: a span of up to LOOP_MAX_PERIOD tokens
    recurring LOOP_REPEATS times in a row over LOOP_MIN_TOKENS tokens, all but a few tokens verbatim
    (so "4. Learn a language" after "3. Learn a language" counts, and "= 9 * 27 = 9 * 28" too).
    O(LOOP_MAX_PERIOD) per token: ~20 µs in Python, 0.14% of SmolLM2's decode time here."""

    def __init__(
        self,
        max_period: int = LOOP_MAX_PERIOD,
        repeats: int = LOOP_REPEATS,
        min_tokens: int = LOOP_MIN_TOKENS,
        match: float = LOOP_MATCH,
    ):
        self.max_period, self.repeats, self.min_tokens, self.match = max_period, repeats, min_tokens, match
        self.ids: list[int] = []
        # For each period p: how many of the last window(p) positions equal the token p earlier.
        self.window = [0] + [max((repeats - 1) * p, min_tokens - p) for p in range(1, max_period + 1)]
        self.hits = [0] * (max_period + 1)
        self.tripped = False

    def push(self, tokens: Sequence[int]) -> bool:
        """Take new tokens; True once the answer repeats itself (and from then on)."""
        ids, hits, window = self.ids, self.hits, self.window
        for token in tokens:
            ids.append(token)
            i = len(ids) - 1
            for p in range(1, min(self.max_period, i) + 1):
                hits[p] += ids[i] == ids[i - p]
                old = i - window[p]  # the position leaving the window
                if old - p >= 0:
                    hits[p] -= ids[old] == ids[old - p]
                if old - p >= -1 and hits[p] >= self.match * window[p]:
                    self.tripped = True
        return self.tripped

