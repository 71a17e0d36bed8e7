"""Log-probabilities with alternatives (`top_logprobs`), in the engine process.

OpenVINO GenAI returns the log-probability of the token it picked and nothing else. For the
alternatives, the served model runs once more beside the pipeline: the export compiled as a stateful
model with the server's own properties, one infer request per request that asks, fed the prompt and
then each batch of tokens the pipeline generates. Row i of its logits is the distribution token i+1
was picked from (the raw distribution, before temperature, penalties or a grammar: GenAI's own
`generated_log_probs` are raw too). The cost is one more pass of the model for that request, in the
engine's loop, and a second compiled copy of the weights once the first such request comes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..eval.logits import step_inputs

PROMPT_CHUNK = 256  # prompt tokens per infer: bounds the logits buffer (256 rows of the vocabulary)

# One generated token's log-probabilities: (its own, [(token id, log-prob), ...] best first).
Scored = tuple[float, list[tuple[int, float]]]


class ScoreModel:
    """The compiled stateful model, loaded on first use."""

    def __init__(self, path: str, device: str, properties: dict):
        self.path, self.device, self.properties = Path(path), device, properties
        self._compiled = None

    def start(self, ids: Sequence[int], alternatives: int) -> Scorer:
        if self._compiled is None:
            import openvino as ov

            self._compiled = ov.Core().compile_model(self.path / "openvino_model.xml", self.device, self.properties)
        return Scorer(self._compiled, ids, alternatives)


class Scorer:
    """One request's pass: `push(new_ids)` returns each new token's log-probability and the best
    `alternatives` of the distribution it was picked from."""

    def __init__(self, compiled, ids: Sequence[int], alternatives: int):
        self.request = compiled.create_infer_request()
        self.names = {port.get_any_name() for port in compiled.inputs}
        self.alternatives, self.offset = alternatives, 0
        self.next_row: np.ndarray | None = None  # log-probs of the token to come
        for start in range(0, len(ids), PROMPT_CHUNK):
            self._feed(ids[start : start + PROMPT_CHUNK])

    def _feed(self, ids: Sequence[int]) -> np.ndarray:
        logits = self.request.infer(step_inputs(ids, self.offset, self.names))["logits"][0]
        self.offset += len(ids)
        rows = log_softmax(logits.astype(np.float32))
        before = self.next_row
        self.next_row = rows[-1].copy()
        return rows[:-1] if before is None else np.concatenate([before[None], rows[:-1]])

    def push(self, new: Sequence[int]) -> list[Scored]:
        if not new:
            return []
        rows = self._feed(new)
        return [(float(row[token]), top(row, self.alternatives)) for row, token in zip(rows, new, strict=True)]


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def top(row: np.ndarray, k: int) -> list[tuple[int, float]]:
    """The k most likely tokens of a row of log-probs, best first (ties: the lower id first)."""
    if k <= 0:
        return []
    picked = np.argpartition(-row, k - 1)[:k]
    order = sorted(picked.tolist(), key=lambda i: (-row[i], i))
    return [(i, float(row[i])) for i in order]
