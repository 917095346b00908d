#!/usr/bin/env bash
# Create .venv (if needed) and install mmgen into it. Sourced by quickstart.sh and test.sh.
# PyTorch is installed first as the CPU build (torch==2.13.0) so that mmgen's own range
# requirement does not pull a multi-GB CUDA build; an existing torch in .venv is kept.
# TORCH_INDEX_URL, when set, is the index torch comes from. On Linux, PyPI's torch wheel is the
# CUDA build, so for the CPU build set TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
# shellcheck disable=SC1091
source .venv/bin/activate
if ! python -c "import torch" >/dev/null 2>&1; then
    pip install --quiet --disable-pip-version-check ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==2.13.0"
fi
pip install --quiet --disable-pip-version-check -e ".[test]" -e plugins/example
