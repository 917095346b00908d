#!/usr/bin/env bash
# Install mmgen into .venv and train the paper's model on the offline default dataset (CPU).
# Usage: bash scripts/quickstart.sh [extra mmgen train options...]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/install.sh
if [ -e runs/quickstart ]; then
    echo "quickstart: replacing the previous quickstart run in runs/quickstart" >&2
    rm -rf runs/quickstart  # the script's own folder; mmgen train never writes over a run itself
fi
mmgen train --prior ebm --agg moe --out runs/quickstart "$@"
mmgen sample runs/quickstart --chain
echo "quickstart: figures in runs/quickstart/figures" >&2
if [ $# -eq 0 ]; then
    echo "quickstart: five epochs show the pipeline, not yet a model that carries the digit across" >&2
    echo "  modalities; 'bash scripts/quickstart.sh train.epochs=30' (about 17 min on 2 cores) trains one." >&2
fi
