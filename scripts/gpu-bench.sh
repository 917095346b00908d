#!/usr/bin/env bash
# The GPU figures of docs/benchmarks.md in one command, on a machine with a CUDA GPU whose python3
# already has PyTorch (such as the device machines lent to some sessions; docs/benchmarks.md,
# "On a GPU", says what travels there). Installs mmgen without touching that python3's packages,
# runs the `gpu`-marked tests, then the Langevin and throughput benchmarks, and writes logs and
# JSON into OUT_DIR. About 10 minutes on an H100.
# Usage: bash scripts/gpu-bench.sh OUT_DIR
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: bash scripts/gpu-bench.sh OUT_DIR}
mkdir -p "$out"
site=$(mktemp -d)
# Packages that machine lacks (omegaconf and antlr4-python3-runtime there) travel as wheels in .whl/.
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" .whl/*.whl
fi
python3 -m pip install -q --no-index --no-deps --no-build-isolation --target "$site" . plugins/example
export PYTHONPATH="$site" PYTHONUNBUFFERED=1
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name(0))" \
    | tee "$out/device.txt"
python3 -m pytest -q -p no:cacheprovider -m gpu tests 2>&1 | tee "$out/gpu-tests.log"
python3 benchmarks/langevin.py --repeats 20 --prior-batches 16 64 256 --dims 16 --json "$out/langevin-gpu.json" 2>&1 \
    | tee "$out/langevin-gpu.log"
python3 benchmarks/throughput.py --devices cuda --steps 20 --warmup 5 --json "$out/throughput-gpu.json" 2>&1 \
    | tee "$out/throughput-gpu.log"
