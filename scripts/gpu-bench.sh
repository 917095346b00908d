#!/usr/bin/env bash
# The GPU figures of docs/benchmarks.md in one command, on a machine with a CUDA GPU whose python3
# already has PyTorch (such as the device machines lent to some sessions; docs/benchmarks.md,
# "On a GPU", says what travels there). Installs mmgen without touching that python3's packages,
# runs the `gpu`-marked tests, the Langevin and throughput benchmarks, the MultiVae comparison (when
# MultiVae's wheels travelled too) and the README quickstart, and writes one log (gpu-bench.log) and
# the benchmarks' JSON into OUT_DIR (seven files: the device tool brings back at most eight).
# Each step has its own time limit and a failed step does not stop the next; the exit status is
# that of the first failure. About 6 minutes on an H100.
# Usage: bash scripts/gpu-bench.sh OUT_DIR
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: bash scripts/gpu-bench.sh OUT_DIR}
mkdir -p "$out"
site=$(mktemp -d)
# Packages that machine lacks (omegaconf and antlr4-python3-runtime there; MultiVae, pythae, nltk
# and pydantic for the comparison) travel as wheels in .whl/.
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" .whl/*.whl || exit 1
fi
python3 -m pip install -q --no-index --no-deps --no-build-isolation --target "$site" . plugins/example || exit 1
export PYTHONPATH="$site" PYTHONUNBUFFERED=1
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name(0))" \
    | tee "$out/gpu-bench.log" || exit 1
status=0
step() {  # step SECONDS COMMAND...: run with a time limit, log to OUT_DIR/gpu-bench.log, remember a failure
    local limit=$1
    shift
    echo "== $*" | tee -a "$out/gpu-bench.log"
    timeout "$limit" "$@" 2>&1 | tee -a "$out/gpu-bench.log"
    local rc=${PIPESTATUS[0]}
    [ "$rc" = 0 ] || { echo "== failed ($rc): $*" | tee -a "$out/gpu-bench.log"; [ "$status" != 0 ] || status=$rc; }
}
step 300 python3 -m pytest -q -p no:cacheprovider -m gpu tests
step 300 python3 benchmarks/langevin.py --devices cuda --repeats 20 --prior-batches 16 64 256 \
    --dims 16 --json "$out/langevin-gpu.json"
step 300 python3 benchmarks/throughput.py --devices cuda --steps 30 --warmup 5 \
    --json "$out/throughput-gpu.json"
step 120 python3 benchmarks/throughput.py --devices cuda --steps 30 --warmup 5 \
    --recipes moe-ebm-mmvaeplus --json "$out/throughput-gpu-nograph.json" model.inference.cuda_graph=false
step 300 python3 benchmarks/throughput.py --devices cuda --steps 30 --warmup 5 --batch-size 256 \
    --recipes mmvaeplus moe-ebm-mmvaeplus --json "$out/throughput-gpu-256.json"
if python3 -c "import multivae" 2>/dev/null; then
    step 300 python3 benchmarks/peer_multivae.py --device cuda --steps 50 --warmup 5 \
        --json "$out/peer-multivae-gpu.json"
fi
run=$(mktemp -d)/quickstart
step 300 env MMGEN_CACHE="$(mktemp -d)" /usr/bin/time -f "wall %e s maxrss %M KB" \
    python3 -c "from mmgen.cli.main import main; main()" train --prior ebm --agg moe --out "$run"
exit $status
