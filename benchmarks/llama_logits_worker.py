"""llama.cpp as a scorer: logits for whole windows, and greedy answers, for benchmarks/recipes.py.

Runs under llama-cpp-python's own interpreter (no ovchat, no torch): `python llama_logits_worker.py
MODEL.gguf N_CTX THREADS`, then one JSON request per line on stdin, one JSON reply per line:
  {"op": "info"}                              -> {"vocab_size": V, "context_length": C}
  {"op": "logits", "ids": [...], "out": F}    -> {"ok": true}   (F: a .npy of shape [len(ids), V])
  {"op": "generate", "ids": [...], "max_new": N, "stop": [...]} -> {"ids": [...]}   (greedy)
Token ids come from the caller, so both sides score exactly the same tokens (no BOS is added).
"""

from __future__ import annotations

import json
import sys

import numpy as np
from llama_cpp import Llama


def main() -> None:
    path, n_ctx, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    llm = Llama(path, n_ctx=n_ctx, n_batch=n_ctx, logits_all=True, n_threads=threads, verbose=False)
    for line in sys.stdin:
        req = json.loads(line)
        if req["op"] == "info":
            reply = {"vocab_size": llm.n_vocab(), "context_length": llm.n_ctx()}
        elif req["op"] == "logits":
            llm.reset()  # every window starts from an empty KV cache
            llm.eval(req["ids"])
            np.save(req["out"], np.asarray(llm.scores[: len(req["ids"])], dtype=np.float32))
            reply = {"ok": True}
        else:
            llm.reset()
            llm.eval(req["ids"])
            new: list[int] = []
            while len(new) < req["max_new"]:
                token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
                if token in req["stop"]:
                    break
                new.append(token)
                llm.eval([token])
            reply = {"ids": new}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
