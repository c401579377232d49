#!/usr/bin/env bash
# Several GPUs on one host (docs/BACKENDS.md, "Several GPUs"): run on a machine with two or more
# GPUs after `scripts/cuda_bench.sh build` (same inputs: SDIST, WHEELS, CHECKPOINT_CFG,
# SMOLLM2_PARTS; same work folder), or let the `build` step here call it.
#
#   scripts/multigpu_bench.sh build tests split replicas   # or any steps in order
#
# tests     the placement and replica tests, with the two-GPU ones that skip elsewhere
# split     split over 2 GPUs (layer, row, tensor split 3,1, GPU 1 alone) vs GPU 0: greedy tokens,
#           memory per GPU, decode speed        -> $OUT/multigpu-split.json
# replicas  64 streaming clients: one replica vs one per GPU -> $OUT/multigpu-replicas.json
# Results go to $OUT (default docs/benchmarks).
set -uo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-/tmp/gw-cuda}
OUT=${OUT:-$PWD/docs/benchmarks}
MODEL=${MODEL:-$WORK/llama-1b-shape-q4_k_m.gguf}
mkdir -p "$OUT"
export PYTHONPATH=$WORK/site:$PWD/src:$PWD PYTHONUNBUFFERED=1
if [ -e /lib/x86_64-linux-gnu/libstdc++.so.6 ]; then
  export LD_PRELOAD=/lib/x86_64-linux-gnu/libstdc++.so.6${LD_PRELOAD:+:$LD_PRELOAD}
fi

build() {
  WORK=$WORK OUT=$OUT scripts/cuda_bench.sh build
}

tests() {
  local tc=$WORK/test-models
  if [ -n "${SMOLLM2_PARTS:-}" ]; then
    mkdir -p "$tc/models/smollm2-135m-instruct"
    cat $SMOLLM2_PARTS > "$tc/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"
  fi
  nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader
  GGUFWORKER_TEST_CACHE=$tc HF_HUB_OFFLINE=1 GGUFWORKER_OFFLINE=1 timeout 400 \
    python3 -m pytest tests/engine/test_split_flags.py tests/server/test_replicas.py -q -rs \
    -p no:cacheprovider 2>&1 | tee "$OUT/multigpu-tests.txt" | tail -15
}

split() {
  timeout 500 python3 scripts/multigpu_bench.py split "$MODEL" --tokens "${TOKENS:-64}" \
    > "$OUT/multigpu-split.json" || return 1
}

replicas() {
  timeout 580 python3 scripts/multigpu_bench.py replicas "$MODEL" --clients "${CLIENTS:-64}" \
    --max-tokens "${MAX_TOKENS:-128}" --runs "${RUNS:-2}" > "$OUT/multigpu-replicas.json" || return 1
}

case "${1:-}" in
  build | tests | split | replicas) for step in "$@"; do "$step" || exit 1; done ;;
  *) echo "usage: $0 build|tests|split|replicas ..." >&2; exit 2 ;;
esac
