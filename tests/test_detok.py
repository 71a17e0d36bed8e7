"""Streaming detokenization and stop strings: pieces joined equal the whole, whatever the chunking."""

from __future__ import annotations

import random

import pytest

from ovchat.sampling import StopMatcher
from ovchat.server.detok import IncrementalDecoder

TEXT = "Café déjà vu — 東京 🎉 emoji 👩‍👩‍👧 and  spaces   here.\nNew line!\ttab " * 12


@pytest.fixture(params=[pytest.param("smollm2", marks=pytest.mark.slow), "tiny_phi3"])
def tokenizer(request):
    import openvino_genai as ov_genai

    folder = request.getfixturevalue("smollm2_ov" if request.param == "smollm2" else "tiny_phi3_ov")
    return ov_genai.Tokenizer(str(folder))


def test_pieces_join_to_the_whole_decode(tokenizer):
    ids = tokenizer.encode(TEXT, add_special_tokens=False).input_ids.data[0].tolist()
    whole = tokenizer.decode(ids, skip_special_tokens=True)
    rng = random.Random(0)
    for _ in range(10):
        decoder, pieces, i = IncrementalDecoder(tokenizer), [], 0
        while i < len(ids):
            step = rng.randint(1, 3)
            pieces.append(decoder.push(ids[i : i + step]))
            i += step
        pieces.append(decoder.flush())
        assert "".join(pieces) == whole
        assert not any("\ufffd" in p for p in pieces)  # never half a character


def test_a_character_cut_by_the_budget_is_dropped(tokenizer):
    ids = tokenizer.encode("ok 🎉", add_special_tokens=False).input_ids.data[0].tolist()
    decoder = IncrementalDecoder(tokenizer)
    shown = decoder.push(ids[:-1]) + decoder.flush()  # the emoji's last byte never came
    assert "\ufffd" not in shown and shown.startswith("ok")


@pytest.mark.parametrize(
    "pieces,stops,expected,stopped",
    [
        (["Hello wor", "ld. Bye"], ["world"], "Hello ", True),
        (["a", "b", "c", "STO", "P", "d"], ["STOP"], "abc", True),
        (["no stop ", "here"], ["STOP"], "no stop here", False),
        (["ST", "ART and ST", "OP"], ["STOP", "END"], "START and ", True),
        (["x", "y"], [], "xy", False),
    ],
)
def test_stop_matcher(pieces, stops, expected, stopped):
    matcher = StopMatcher(stops)
    out = "".join(matcher.push(p) for p in pieces) + matcher.flush()
    assert out == expected and matcher.stopped == stopped
