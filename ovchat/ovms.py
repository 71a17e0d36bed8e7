"""Hand an exported folder to OpenVINO Model Server (OVMS): write a model repository it serves as is.

The repository holds `config.json` (a `model_config_list` entry per model, as OVMS's own export
script writes since 2025.4) and, per model, a folder with the exported files and the `graph.pbtxt`
of OVMS's continuous-batching LLM calculator (`HttpLLMCalculator` with `LLMCalculatorOptions`, and
the execution-contexts side packet of OVMS 2026.3), with ovchat serve's runtime settings carried
over and OVMS's tool and reasoning parsers named from the model's chat template. The same exported
files are used: nothing is re-exported.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from . import runtime
from .config import DEFAULT_DEVICE, LATENCY_CONFIG, OVMS_CACHE_SIZE_GB, OVMS_MAX_NUM_SEQS, OVMS_PRECISION
from .errors import OvchatError, print_nothing
from .precision import choose as choose_precision
from .tool_formats import chat_template
from .tool_formats import template_parsers as parsers

# The fields of mediapipe.LLMCalculatorOptions ovchat sets, as OVMS's own export script writes them.
GRAPH_TEMPLATE = """# OVMS_GRAPH_QUEUE_MAX_SIZE: AUTO
input_stream: "HTTP_REQUEST_PAYLOAD:input"
output_stream: "HTTP_RESPONSE_PAYLOAD:output"

node: {{
  name: "LLMExecutor"
  calculator: "HttpLLMCalculator"
  input_stream: "LOOPBACK:loopback"
  input_stream: "HTTP_REQUEST_PAYLOAD:input"
  input_side_packet: "LLM_NODE_RESOURCES:llm"
  input_side_packet: "LLM_NODE_EXECUTION_CONTEXTS:llm_ctx"
  output_stream: "LOOPBACK:loopback"
  output_stream: "HTTP_RESPONSE_PAYLOAD:output"
  input_stream_info: {{
    tag_index: 'LOOPBACK:0',
    back_edge: true
  }}
  node_options: {{
    [type.googleapis.com / mediapipe.LLMCalculatorOptions]: {{
      pipeline_type: LM_CB,
      models_path: "./",
      plugin_config: '{plugin_config}',
      enable_prefix_caching: true,
      cache_size: {cache_size},
      max_num_seqs: {max_num_seqs},
      device: "{device}",{parsers}
    }}
  }}
  input_stream_handler {{
    input_stream_handler: "SyncSetInputStreamHandler",
    options {{
      [mediapipe.SyncSetInputStreamHandlerOptions.ext] {{
        sync_set {{
          tag_index: "LOOPBACK:0"
        }}
      }}
    }}
  }}
}}
"""
def _parser_options(template: str) -> str:
    tool, reasoning = parsers(template)
    lines = []
    if reasoning:
        lines.append(f'reasoning_parser: "{reasoning}",')
    if tool:  # OVMS then constrains calls to their schemas, as ovchat serve does
        lines += [f'tool_parser: "{tool}",', "enable_tool_guided_generation: true,"]
    return "".join(f"\n      {line}" for line in lines)


# What OVMS's LLM calculator reads from the model folder.
REQUIRED_FILES = ("openvino_model.xml", "openvino_model.bin", "openvino_tokenizer.xml", "openvino_detokenizer.xml")
SKIPPED_FILES = ("ovchat_manifest.json",)  # ovchat's own; the copy is no longer an ovchat export


def _place(source: Path, target: Path) -> None:
    """A hard link where the file system allows (no second copy of the weights), else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def write_repository(
    model: str,
    repository: str | os.PathLike,
    *,
    name: str | None = None,
    device: str = DEFAULT_DEVICE,
    max_num_seqs: int = OVMS_MAX_NUM_SEQS,
    kv_cache_gb: int = OVMS_CACHE_SIZE_GB,
    precision: str | None = None,
    kv_cache_precision: str | None = None,
    force: bool = False,
    log: Callable[[str], None] = print_nothing,
) -> Path:
    """Write (or add to) an OVMS model repository for `model` and return its config.json path.

    The plugin config states every precision, as `ovchat serve` runs by default (the same answer at
    any concurrency), with f32 inference unless `precision` says: OVMS may run on another CPU, and
    f32 loads on every kind.
    """
    chosen = choose_precision(device, precision or OVMS_PRECISION, kv_cache_precision, purpose="batch-invariant")
    from .loader import prepare

    path, info = prepare(model, device, log=log)
    missing = [f for f in REQUIRED_FILES if not (path / f).is_file()]
    if missing:
        raise OvchatError(f"{path} lacks {', '.join(missing)}, which OVMS needs: re-export it with `ovchat export`")
    name = name or runtime.model_name(path, info)
    parts = name.split("/")
    if name.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise OvchatError(f"{name!r} cannot name a folder inside the repository; pass another --name")
    root = Path(repository)
    folder = root / name
    if folder.exists() and not force:
        raise OvchatError(f"{folder} already exists; pass --force to replace it")
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".{folder.name}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for item in path.iterdir():
        if item.is_file() and item.name not in SKIPPED_FILES:
            _place(item, staging / item.name)
    plugin_config = json.dumps(
        {**chosen.properties(), **LATENCY_CONFIG}, separators=(", ", ": ")
    )
    (staging / "graph.pbtxt").write_text(
        GRAPH_TEMPLATE.format(
            plugin_config=plugin_config,
            cache_size=kv_cache_gb,
            max_num_seqs=max_num_seqs,
            device=device,
            parsers=_parser_options(chat_template(path)),
        )
    )
    if folder.exists():
        shutil.rmtree(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(folder)
    config = root / "config.json"
    data = json.loads(config.read_text()) if config.is_file() else {}
    # Graphs listed the older way (mediapipe_config_list) move to model_config_list, as OVMS's script does.
    legacy = [{"config": e} for e in data.pop("mediapipe_config_list", []) if "name" in e and "base_path" in e]
    entries = [e for e in data.get("model_config_list", []) + legacy if e.get("config", {}).get("name") != name]
    entries.append({"config": {"name": name, "base_path": name}})
    data = {**data, "model_config_list": entries}
    partial = config.with_name(f".config.json.tmp-{os.getpid()}")
    partial.write_text(json.dumps(data, indent=4) + "\n")
    partial.replace(config)  # whole or the old one: OVMS may be watching this file
    return config
