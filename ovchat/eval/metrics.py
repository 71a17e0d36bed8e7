"""Per-token scores of a model on a text, and their summaries with standard errors (numpy only).

Perplexity is exp(mean NLL) over the scored tokens. Its standard error comes from the standard
error of the mean NLL, se = std(NLL) / sqrt(n), by the delta method: se(ppl) = ppl * se(NLL), as
llama.cpp reports it. Neighbouring tokens are correlated, so treat it as a lower bound. Against a
reference, the paired numbers are tighter: the perplexity ratio exp(mean(NLL_model - NLL_ref)),
KL(reference || model) per position, and how often both pick the same top token.
"""

from __future__ import annotations

import math

import numpy as np


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-probabilities in float64 (the small differences of a good quantization survive)."""
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def mean_se(values) -> tuple[float, float]:
    """The mean and its standard error (0 for fewer than two values)."""
    v = np.asarray(values, dtype=np.float64)
    se = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else 0.0
    return float(v.mean()), se


class Tally:
    """One model's per-token numbers on the scored tokens, gathered window by window."""

    def __init__(self) -> None:
        self.nll: list[np.ndarray] = []
        self.delta: list[np.ndarray] = []  # NLL minus the reference's NLL on the same token
        self.kl: list[np.ndarray] = []
        self.same_top1: list[np.ndarray] = []

    def add(self, logprobs: np.ndarray, targets: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
        """Add a window: log-probabilities (tokens × vocab), the tokens that came, the reference's log-probs."""
        rows = np.arange(len(targets))
        nll = -logprobs[rows, targets]
        self.nll.append(nll)
        if reference is not None:
            if reference.shape != logprobs.shape:
                raise ValueError(f"reference log-probs {reference.shape} do not match the model's {logprobs.shape}")
            self.delta.append(nll + reference[rows, targets])
            self.kl.append((np.exp(reference) * (reference - logprobs)).sum(axis=-1))
            self.same_top1.append(reference.argmax(axis=-1) == logprobs.argmax(axis=-1))
        return nll

    @property
    def tokens(self) -> int:
        return sum(len(x) for x in self.nll)

    def perplexity(self) -> dict:
        mean, se = mean_se(np.concatenate(self.nll))
        ppl = math.exp(mean)
        return {"value": ppl, "se": ppl * se, "nll": mean, "nll_se": se, "tokens": self.tokens}

    def versus_reference(self) -> dict:
        """Perplexity ratio, top-1 agreement and KL(reference || model), each with its standard error."""
        delta, kl = np.concatenate(self.delta), np.concatenate(self.kl)
        same = np.concatenate(self.same_top1).astype(np.float64)
        d_mean, d_se = mean_se(delta)
        kl_mean, kl_se = mean_se(kl)
        p = float(same.mean())
        return {
            "ppl_ratio": {"value": math.exp(d_mean), "se": math.exp(d_mean) * d_se},
            "top1_agreement": {"value": p, "se": math.sqrt(p * (1 - p) / len(same))},
            "kl": {"mean": kl_mean, "se": kl_se, "p99": float(np.percentile(kl, 99)), "max": float(kl.max())},
        }
