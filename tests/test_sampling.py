"""SamplingParams and its one translation to OpenVINO GenAI's GenerationConfig."""

from __future__ import annotations

import json
import pickle

import pytest

from ovchat import OvchatError, SamplingParams
from ovchat.runtime import recommended_sampling
from ovchat.sampling import CHAT_SAMPLING, LoopGuard, StopMatcher, generation_config


def test_every_field_reaches_the_generation_config():
    params = SamplingParams(
        max_new_tokens=7,
        temperature=0.5,
        top_p=0.9,
        top_k=40,
        repetition_penalty=1.1,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        seed=3,
        json_schema='{"type": "object"}',
    )
    config = generation_config(params, {2, 5}, apply_chat_template=True)
    assert config.max_new_tokens == 7 and config.apply_chat_template
    assert config.do_sample and config.rng_seed == 3 and config.top_k == 40
    assert config.temperature == pytest.approx(0.5) and config.top_p == pytest.approx(0.9)
    assert config.repetition_penalty == pytest.approx(1.1)
    assert config.presence_penalty == pytest.approx(0.5) and config.frequency_penalty == pytest.approx(-0.5)
    assert set(config.stop_token_ids) == {2, 5}
    assert config.structured_output_config.json_schema == '{"type": "object"}'
    # The budget left (of a context, of a resumed request) overrides the params' own.
    assert generation_config(params, (), max_new_tokens=3).max_new_tokens == 3


def test_unseeded_sampling_draws_a_seed_each_time():
    seeds = {generation_config(SamplingParams(temperature=0.5), ()).rng_seed for _ in range(3)}
    assert len(seeds) == 3
    assert generation_config(SamplingParams(temperature=0.5, seed=9), ()).rng_seed == 9


def test_greedy_by_default_and_prompt_lookup_drafts():
    config = generation_config(SamplingParams(), (), prompt_lookup=True)
    assert not config.do_sample and config.max_new_tokens == 1024
    assert generation_config(SamplingParams(no_repeat_ngram_size=3), ()).no_repeat_ngram_size == 3
    assert config.num_assistant_tokens == 5 and config.max_ngram_size == 3
    assert config.structured_output_config is None


def test_params_are_frozen_picklable_and_normalise_stop():
    params = SamplingParams(stop=["a", "b"])
    assert params.stop == ("a", "b") and SamplingParams(stop="x").stop == ("x",)
    assert SamplingParams(stop=None).stop == ()  # as OpenAI's clients send it
    assert params.guards_loops and not SamplingParams(json_schema="{}").guards_loops
    assert pickle.loads(pickle.dumps(params)) == params  # they cross into the server's engine process
    with pytest.raises(AttributeError):
        params.temperature = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"top_k": -1}, "top_k must be 0"),
        ({"temperature": "hot"}, "temperature must be between 0 and 2"),
        ({"frequency_penalty": -2.5}, "frequency_penalty must be between -2 and 2"),
        ({"seed": 1.5}, "seed must be an integer"),
        ({"max_new_tokens": True}, "max_new_tokens must be a positive integer"),
        ({"json_schema": {"type": "object"}}, "json_schema must be a JSON text"),
    ],
)
def test_bad_params_are_named(kwargs, message):
    with pytest.raises(OvchatError, match=message):
        SamplingParams(**kwargs)


def _trips_at(guard: LoopGuard, ids: list[int]) -> int | None:
    return next((i for i, token in enumerate(ids) if guard.push([token])), None)


def test_the_loop_guard_ends_verbatim_and_numbered_repetition():
    sentence = list(range(100, 120))  # a 20-token sentence, again and again
    at = _trips_at(LoopGuard(), sentence * 20)
    assert at is not None and 60 <= at < 130  # after a few repeats, long before the budget
    numbered = [t for k in range(40) for t in [500 + k, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]]  # "3. item", "4. item"
    assert _trips_at(LoopGuard(), numbered) is not None
    assert _trips_at(LoopGuard(), [1] * 300) is not None  # one token forever
    guard = LoopGuard()
    guard.push(sentence * 20)
    assert guard.tripped and guard.push([1])  # and it stays tripped


def test_the_loop_guard_lets_ordinary_and_short_repetitive_answers_through():
    import random

    rng = random.Random(0)
    assert _trips_at(LoopGuard(), [rng.randrange(2000) for _ in range(2000)]) is None
    assert _trips_at(LoopGuard(), [rng.randrange(30) for _ in range(2000)]) is None  # a small vocabulary
    assert _trips_at(LoopGuard(), [42, 11] * 30) is None  # "yes, yes, ..." asked for 30 times
    counting = [t for n in range(1, 41) for t in (1000 + n, 13)]  # "1\n2\n...40\n": no span repeats
    assert _trips_at(LoopGuard(), counting) is None


def test_stop_matcher_holds_back_what_could_become_a_stop_string():
    matcher = StopMatcher(["</s>", "END"])
    assert matcher.push("Hello </") == "Hello"  # " </" could still begin "</s>": held back
    assert matcher.push("p> fine") == " </p> f"
    assert matcher.push(" ok EN") == "ine ok"
    assert matcher.push("D and more") == " " and matcher.stopped
    assert matcher.push("ignored") == "" and matcher.flush() == ""


# -- a chat's sampling unless told otherwise ---------------------------------------------------------


def _folder(tmp_path, generation_config: dict | None):
    if generation_config is not None:
        (tmp_path / "generation_config.json").write_text(json.dumps(generation_config))
    return tmp_path


@pytest.mark.parametrize(
    "generation_config, info, expected, source",
    [
        # The model's own generation_config.json, where it samples: its values, transformers' for the rest.
        ({"do_sample": True, "temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05}, None,
         {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05},
         "the model's generation_config.json"),
        ({"do_sample": True, "temperature": 0.6}, {"source": {"spec": "phi-3-mini"}},
         {"temperature": 0.6, "top_p": 1.0, "top_k": 50}, "the model's generation_config.json"),
        ({"do_sample": True, "temperature": 9, "top_p": "x", "top_k": -3}, None,
         {"temperature": 2.0, "top_p": 1.0, "top_k": 0}, "the model's generation_config.json"),
        ({"do_sample": True, "temperature": float("nan"), "top_p": float("inf"), "top_k": 1e12}, None,
         {"temperature": 1.0, "top_p": 1.0, "top_k": 2**31 - 1}, "the model's generation_config.json"),
        # Not sampling there: the catalog's card, by alias or by the hub id an export was made from.
        ({"do_sample": False, "temperature": 0.7}, {"source": {"spec": "phi-3-mini"}}, {},
         "the phi-3-mini model card"),
        (None, {"source": {"spec": "microsoft/Phi-3.5-mini-instruct",
                           "identity": "hub:microsoft/Phi-3.5-mini-instruct"}}, {}, "the phi-3.5-mini model card"),
        # Neither: ovchat's measured default.
        ({"bos_token_id": 1}, {"source": {"spec": "smollm2-135m"}}, CHAT_SAMPLING, "ovchat's default"),
        (None, None, CHAT_SAMPLING, "ovchat's default"),
    ],
)  # fmt: skip
def test_recommended_sampling_comes_from_the_model_its_card_or_ovchat(tmp_path, generation_config, info, expected,
                                                                      source):
    params, said = recommended_sampling(_folder(tmp_path, generation_config), info)
    assert (params, said) == (SamplingParams(**expected), source)


def test_the_sampling_summary_reads_as_a_person_would():
    assert SamplingParams().summary() == "greedy"
    assert SamplingParams(**CHAT_SAMPLING).summary() == "temperature 0.5, top-p 0.9, top-k 40, repetition penalty 1.1"
    assert SamplingParams(repetition_penalty=1.2, no_repeat_ngram_size=3).summary() == (
        "greedy, repetition penalty 1.2, no repeated 3-grams"
    )
