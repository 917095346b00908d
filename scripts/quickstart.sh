#!/usr/bin/env bash
# Install mmgen into .venv and train the paper's model on the offline default dataset (CPU).
# Usage: bash scripts/quickstart.sh [extra mmgen train options...]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/install.sh
mmgen train --prior ebm --agg moe --out runs/quickstart "$@"
mmgen sample runs/quickstart --chain
