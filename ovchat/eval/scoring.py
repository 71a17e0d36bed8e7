"""Scoring a text: the shipped texts, reading one, and per-window log-likelihoods of several models
against a reference on the same tokens."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..config import DATA
from ..errors import OvchatError
from .logits import sliding_logits
from .metrics import Tally, log_softmax

DEFAULT_TEXT = DATA / "alice_in_wonderland_ch1-6.txt"
DEFAULT_PROMPTS = DATA / "prompts.jsonl"
DEFAULT_MAX_TOKENS = 4096  # of the text: ~1 min for SmolLM2-135M and its reference on 2 cores
DEFAULT_WINDOW = 512  # or the model's context, if shorter
DEFAULT_NEW_TOKENS = 128  # per answer, as who_what_benchmark
# Prompts answered by default (the shipped file mixes its categories, so any first N are varied): the
# float32 reference answers at ~14 tok/s here, ~11 s a prompt for SmolLM2-135M.
DEFAULT_PROMPT_LIMIT = 16
TOKENIZER_SAMPLE_CHARS = 4000  # of the text, tokenized by every model and the reference: they must agree


def read_text(path: Path) -> str:
    """The evaluation text, or a clear error for a missing, unreadable or empty file."""
    try:
        content = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise OvchatError(f"cannot read the text file {path}: {exc}") from None
    if not content.strip():
        raise OvchatError(f"the text file {path} is empty: pass a file of ordinary prose with --text")
    return content


def score_text(scorers: Sequence, ids: Sequence[int], window: int, stride: int, step=lambda: None) -> list[Tally]:
    """Score `ids` with each scorer, window by window; the first scorer is the reference of the others."""
    tallies = [Tally() for _ in scorers]
    targets_all = np.asarray(ids)
    streams = [sliding_logits(s, ids, window, stride) for s in scorers]
    for (first, end, ref_logits), *others in zip(*streams, strict=True):
        targets = targets_all[first:end]
        ref_lp = log_softmax(ref_logits)
        tallies[0].add(ref_lp, targets)
        for tally, (_, _, logits) in zip(tallies[1:], others, strict=True):
            tally.add(log_softmax(logits), targets, ref_lp)
        step()
    return tallies
