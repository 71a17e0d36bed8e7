"""ovchat: local chat models, fast on CPUs with OpenVINO.

import ovchat
model = ovchat.load("smollm2-135m")          # exports once, then loads from the cache
print(model.generate("What is the capital of France?"))
for chunk in model.stream_generate([{"role": "user", "content": "Hi"}]):
    print(chunk.text, end="", flush=True)
"""

from .catalog import DEFAULT_MODEL
from .engine import GenerationResponse, Model, SamplingParams, load
from .errors import OvchatError
from .export import Recipe, export

__version__ = "0.1.0"
__all__ = ["DEFAULT_MODEL", "GenerationResponse", "Model", "OvchatError", "Recipe", "SamplingParams", "export", "load"]
