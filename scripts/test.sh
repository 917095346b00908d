#!/usr/bin/env bash
# Install mmgen (CPU PyTorch, the example plugin, test extras) into .venv and run the test suite.
# Usage: bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/install.sh
python -m pytest -q -p no:cacheprovider "$@"
