#!/usr/bin/env bash
# Everything that needs a CUDA GPU, in one run that fits a 15-minute device lease:
# the bf16/fp16 kernel suite (routed kernels too), the kernel benchmark against FlexAttention
# and SDPA, the routing benchmark (selection stage and routed attention), the simulator's calibration and its predicted-vs-measured check. JSON goes to $OUT (or
# benchmarks/results/gpu when OUT is unset); commit it and put the tables in the README.
#
#   bash benchmarks/gpu.sh                 # on a GPU machine
#   bash benchmarks/gpu.sh --quick         # the suite and 4K-16K only (about 4 minutes)
#
# Lark is not installed on the lent machine: carry it as a wheel in .whl/ (see the README's
# "Running the GPU checks"); this script installs .whl/*.whl when that folder exists.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results/gpu}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TRITON_INTERPRET=0
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PWD"
else
    export PYTHONPATH="$PWD"
fi
LENGTHS=4096,8192,16384,32768,65536
[ "${1:-}" = "--quick" ] && LENGTHS=4096,16384

status=0
step() {  # name, command...: run one step with its log under $OUT, keep going on failure
    local name=$1; shift
    echo "== $name: $*"
    local start=$SECONDS
    if ! "$@" > >(tee "$OUT/$name.log") 2>&1; then
        echo "!! $name failed"; status=1
    fi
    echo "== $name took $((SECONDS - start)) s"
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/device.txt"
step targets python3 -m attnlang.codegen.targets --audit --json "$OUT/targets.json"
step gpu_tests python3 -m pytest -q -x tests/test_gpu.py --junitxml="$OUT/gpu_tests.xml"
step kernels python3 benchmarks/kernels.py --lengths "$LENGTHS" --out "$OUT/kernels.json"
step routing python3 benchmarks/routing.py --lengths 16384,32768,65536,131072 --out "$OUT/routing.json"
step calibrate python3 -m attnlang.cli calibrate --hw h100 --out "$OUT/h200_profile.json"
step simulator python3 benchmarks/simulator.py --profile "$OUT/h200_profile.json" \
    --measured "$OUT/kernels.json" --out "$OUT/simulator.json"
exit $status
