"""ovchat: local chat models, fast on CPUs with OpenVINO.

import ovchat
model = ovchat.load("smollm2-135m")          # exports once, then loads from the cache
print(model.generate("What is the capital of France?"))
for chunk in model.stream_generate([{"role": "user", "content": "Hi"}]):
    print(chunk.text, end="", flush=True)
vectors = ovchat.load_embedder("all-minilm-l6-v2").embed(["a sentence", "another"])
"""

from .build.export import export
from .build.recipe import Recipe
from .catalog import DEFAULT_MODEL
from .embeddings import Embedder
from .errors import OvchatError
from .eval.evaluate import evaluate
from .loader import load, load_embedder
from .model import GenerationResponse, Model
from .sampling import SamplingParams
from .session import ChatSession
from .tools import Tool, ToolCall

__version__ = "0.1.0"
__all__ = [
    "ChatSession",
    "DEFAULT_MODEL",
    "Embedder",
    "GenerationResponse",
    "Model",
    "OvchatError",
    "Recipe",
    "SamplingParams",
    "Tool",
    "ToolCall",
    "evaluate",
    "export",
    "load",
    "load_embedder",
]
