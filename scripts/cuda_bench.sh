#!/usr/bin/env bash
# Build ggufworker's llama.cpp with CUDA on a machine without a package index, then run the
# engine tests with every layer on the GPU and the engine- and HTTP-level benchmarks.
#
#   scripts/cuda_bench.sh build   # compile llama-cpp-python (CUDA) from a local sdist, make the
#                                 # Llama-3.2-1B-shape random checkpoint, convert it to Q4_K_M
#   scripts/cuda_bench.sh run     # tests + benchmarks; JSON results in $OUT (default ./out)
#   scripts/cuda_bench.sh build timing bench   # or any steps in order (build is skipped when done)
#   scripts/cuda_bench.sh build pack           # also leave the CUDA build in $OUT as pieces
#                                              # (cuda-build.tar.xz.NN): in $PREBUILT, `build`
#                                              # restores them instead of compiling (~2 s)
#   scripts/cuda_bench.sh build profile        # where a 64-stream step's time goes
#
# Inputs (environment): SDIST (llama-cpp-python sdist, default .carry/llama_cpp_python-*.tar.gz),
# WHEELS (folder of wheels the machine lacks: gguf, diskcache, fastapi + starlette + pydantic(-core,
# -settings), opentelemetry-api, uvicorn, openai + jiter, sse-starlette, starlette-context; default .carry/whl), CHECKPOINT_CFG
# (folder with config.json + tokenizer files of the 1B shape, default .carry/l1b),
# SMOLLM2_PARTS (glob of the SmolLM2 GGUF's pieces, concatenated in order), CUDA_ARCH (default 90),
# PREBUILT (default .carry/prebuilt). With a prebuilt build, SDIST may be a tarball of the sdist's
# llama_cpp/ package alone, and CHECKPOINT_CFG may hold tokenizer.json.xz instead of tokenizer.json.
set -uo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-/tmp/gw-cuda}
OUT=${OUT:-$PWD/out}
SDIST=${SDIST:-$(ls .carry/llama_cpp_python-*.tar.gz 2>/dev/null | head -1)}
WHEELS=${WHEELS:-.carry/whl}
CHECKPOINT_CFG=${CHECKPOINT_CFG:-.carry/l1b}
CUDA_ARCH=${CUDA_ARCH:-90}
PREBUILT=${PREBUILT:-.carry/prebuilt}
mkdir -p "$WORK" "$OUT"
export PYTHONPATH=$WORK/site:$PWD/src:$PWD PYTHONUNBUFFERED=1
# On a Python whose numpy is imported before llama_cpp (pytest plugins do it), loading a model
# segfaulted on the GPU machine; preloading the system libstdc++ avoids it (docs/BACKENDS.md).
if [ -e /lib/x86_64-linux-gnu/libstdc++.so.6 ]; then
  export LD_PRELOAD=/lib/x86_64-linux-gnu/libstdc++.so.6${LD_PRELOAD:+:$LD_PRELOAD}
fi
L1B=$WORK/llama-1b-shape-q4_k_m.gguf

build() {
  nvidia-smi --query-gpu=name,compute_cap,driver_version --format=csv,noheader
  if [ -e "$WORK/site/llama_cpp/__init__.py" ] && [ -e "$L1B" ]; then
    echo "already built in $WORK"
    return 0
  fi
  rm -rf "$WORK/src" && mkdir -p "$WORK/src" && tar xzf "$SDIST" -C "$WORK/src"
  local t0=$(date +%s) sd
  sd=$(echo "$WORK"/src/llama_cpp_python-*)
  if ls "$PREBUILT"/cuda-build.tar.xz.* > /dev/null 2>&1; then
    # the libraries and llama-server of an earlier build (`pack`), for the same sdist
    cat "$PREBUILT"/cuda-build.tar.xz.* | tar xJf - -C "$WORK" || return 1
    echo "cuda build restored from $PREBUILT: $(( $(date +%s) - t0 )) s"
  else
  # One CUDA build of the vendored llama.cpp as shared libraries: llama-cpp-python's package
  # loads them (the wheel holds the same libraries), and llama-server, the bench peer, links
  # the same ones; the CUDA kernels, most of the build time, are compiled once.
  cmake -S "$sd/vendor/llama.cpp" -B "$WORK/build" -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=on \
    -DCMAKE_CUDA_ARCHITECTURES=$CUDA_ARCH -DBUILD_SHARED_LIBS=ON -DLLAMA_BUILD_SERVER=ON \
    -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF > "$OUT/cuda_build.log" 2>&1 &&
    cmake --build "$WORK/build" --target llama llama-server -j "$(nproc)" >> "$OUT/cuda_build.log" 2>&1 ||
    { echo "build failed"; tail -30 "$OUT/cuda_build.log"; return 1; }
  echo "cuda build (libllama + llama-server): $(( $(date +%s) - t0 )) s"
  fi
  mkdir -p "$WORK/site/llama_cpp/lib"
  cp -r "$sd"/llama_cpp/. "$WORK/site/llama_cpp/"
  cp -P "$WORK"/build/bin/*.so* "$WORK/site/llama_cpp/lib/"
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$WORK/site" \
    "$WHEELS"/*.whl || return 1
  python3 -m ggufworker.engine.selfcheck || return 1
  local cfg=$CHECKPOINT_CFG
  if [ -e "$cfg/tokenizer.json.xz" ]; then  # carried compressed (17 MB -> 1.7 MB)
    mkdir -p "$WORK/cfg" && cp "$cfg"/*.json "$WORK/cfg/" && xz -dc "$cfg/tokenizer.json.xz" > "$WORK/cfg/tokenizer.json"
    cfg=$WORK/cfg
  fi
  python3 - "$cfg" "$WORK/llama-1b-shape" <<'PY'
import shutil, sys, torch, transformers
src, dst = sys.argv[1], sys.argv[2]
torch.manual_seed(0)
model = transformers.AutoModelForCausalLM.from_config(
    transformers.AutoConfig.from_pretrained(src), dtype=torch.bfloat16)
model.save_pretrained(dst)
import os
for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
    if os.path.exists(f"{src}/{name}"):
        shutil.copy(f"{src}/{name}", dst)
print("random checkpoint:", sum(p.numel() for p in model.parameters()), "parameters")
PY
  /usr/bin/time -f "convert to q4_k_m: %e s, peak RSS %M kB" \
    python3 -m converters.st2gguf "$WORK/llama-1b-shape" --outfile "$L1B" --outtype q4_k_m --no-progress --force
}

# The build's shared libraries and llama-server, compressed in pieces that fit the device tool's
# file limits: put them in $PREBUILT and `build` restores them instead of compiling.
pack() {
  ( cd "$WORK" && tar cf - build/bin/*.so* build/bin/llama-server | xz -T0 -6 ) |
    split -b 15m -d - "$OUT/cuda-build.tar.xz." && ls -l "$OUT"/cuda-build.tar.xz.*
}

# Where a 64-stream step's time goes (scripts/step_profile.py), greedy and sampled, backend
# sampling on and off, with and without a wait after each decode. Stops starting runs after
# $DEADLINE seconds of this script.
profile() {
  local spec
  for spec in ${PROFILE_SPECS:-0:on 0.8:on 0.8:off 0:on:--sync 0.8:on:--sync 0.8:off:--sync}; do
    [ "$SECONDS" -lt "${DEADLINE:-100000}" ] || { echo "deadline: skipped $spec"; continue; }
    set -- ${spec//:/ }
    timeout 90 python3 scripts/step_profile.py "$L1B" --streams ${STREAMS:-64} --temperature $1 \
      --backend-sampling $2 "${@:3}" ${PROFILE_ARGS:-} 2>/dev/null | tee -a "$OUT/cuda_step_profile.jsonl"
  done
}

# The raw loop's step split into the llama_decode call, the wait for the GPU and the argmax.
timing() {
  python3 scripts/decode_timing.py "$L1B" --steps 256 | tee "$OUT/cuda_decode_timing.json"
}

# The same split for the engine (its llama_decode and logits calls timed) and the raw loop, at
# several CPU thread counts: where a step's time goes on each side.
matrix() {
  for th in 16 4 1; do
    for mode in "" "--in-thread" "--engine --pipeline on" "--engine --pipeline off"; do
      timeout 60 python3 scripts/decode_timing.py "$L1B" --steps 384 --ctx 16384 --threads $th $mode 2>/dev/null
    done
  done | tee "$OUT/cuda_step_matrix.jsonl"
}

# Engine-level benchmark: $STREAMS (default 1, 8 and 32) streams with the default (pipelined) engine, then one
# stream with pipelining off, each against the raw loop in the same run.
bench() {
  timeout 330 python3 -m ggufworker.cli bench --model "$L1B" --streams "${STREAMS:-1,8,32}" --tokens 128 \
    --runs "${RUNS:-3}" --ctx-size 16384 --json > "$OUT/cuda_engine_bench.json" 2> "$OUT/cuda_engine_bench.err"
  tail -2 "$OUT/cuda_engine_bench.err"
  timeout 150 python3 -m ggufworker.cli bench --model "$L1B" --streams 1 --tokens 128 \
    --runs "${RUNS:-3}" --pipeline off --json > "$OUT/cuda_engine_bench_nopipe.json" 2> "$OUT/cuda_engine_bench_nopipe.err"
  tail -2 "$OUT/cuda_engine_bench_nopipe.err"
  python3 - "$OUT" <<'PY'
import json, sys
for name in ("cuda_engine_bench", "cuda_engine_bench_nopipe"):
    try:
        r = json.load(open(f"{sys.argv[1]}/{name}.json"))
    except Exception as exc:
        print(name, "no result:", exc); continue
    print(name, "pipeline", r.get("pipeline"), "ratios", r.get("ratios"),
          "engine", {k: round(v["aggregate_tps"]) for k, v in r["engine"].items()}, "raw", r.get("raw"))
PY
}

tests() {
  local tc=$WORK/test-models
  if [ -n "${SMOLLM2_PARTS:-}" ]; then
    mkdir -p "$tc/models/smollm2-135m-instruct"
    cat $SMOLLM2_PARTS > "$tc/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"
  fi
  python3 -c "import llama_cpp; print('llama-cpp-python', llama_cpp.__version__, 'gpu offload', llama_cpp.llama_supports_gpu_offload())"
  GGUFWORKER_TEST_CACHE=$tc HF_HUB_OFFLINE=1 GGUFWORKER_OFFLINE=1 timeout 400 \
    python3 -m pytest tests/engine -q -p no:cacheprovider -k "not gemma" 2>&1 | tee "$OUT/cuda_engine_tests.log" | tail -15
}

http() {
  timeout 400 python3 -m ggufworker.cli bench --http --model "$L1B" --clients 8 --max-tokens 128 --runs "${RUNS:-3}" \
    --json > "$OUT/cuda_http_bench.json" 2> "$OUT/cuda_http_bench.err"
  tail -3 "$OUT/cuda_http_bench.err"
}

# Sampled and greedy traffic through both servers at several client counts (runs interleaved,
# tokens from usage): our server against llama.cpp's llama-server (-np N -kvu). TARGETS,
# BACKEND_SAMPLING (our --backend-sampling), PEER_ARGS (extra llama-server flags, e.g. -bs) and
# TAG (a file-name suffix) select variants.
peer() {
  local bin=$(ls "$WORK"/build/bin/llama-server 2>/dev/null) name
  [ -n "$bin" ] || { echo "no llama-server build"; return 1; }
  for temp in ${TEMPS:-0 0.8}; do
    for c in ${CLIENTS:-8 32 64}; do
      name=peer${TAG:-}_t${temp}_c${c}
      timeout 200 python3 -m ggufworker.cli bench --http --model "$L1B" \
        --targets "${TARGETS:-ggufworker,llama-server}" --backend-sampling "${BACKEND_SAMPLING:-auto}" \
        --llama-server "$bin" --llama-server-args="${PEER_ARGS:-}" --clients $c --max-tokens 128 \
        --runs "${RUNS:-3}" --temperature $temp --ctx-size 16384 --json > "$OUT/$name.json" 2> "$OUT/$name.err"
      python3 - "$OUT/$name.json" <<'PY'
import json, sys
try:
    r = json.load(open(sys.argv[1]))
except Exception as exc:
    print(sys.argv[1], "no result", exc); sys.exit(0)
g, l = r.get("ggufworker", {}), r.get("llama_server", {})
print(f"T={r['sampling']['temperature']} clients={r['clients']}: ours 1-stream {g.get('single_decode_tps')} "
      f"N {g.get('aggregate_tps')} ({g.get('streams_completed')}/{r['clients']}) | llama-server 1-stream "
      f"{l.get('single_decode_tps')} N {l.get('aggregate_tps')} ({l.get('streams_completed')}/{r['clients']}) | "
      f"ratios {r.get('single_decode_ratio_vs_llama_server')} {r.get('aggregate_ratio_vs_llama_server')}")
PY
    done
  done
}

# llama.cpp's graph-reuse counter (n_reused) for the engine's decode steps, greedy and sampled,
# 1 and 8 streams (scripts/graph_reuse.py; BACKEND_SAMPLING picks our mode).
reuse() {
  timeout 200 python3 scripts/graph_reuse.py "$L1B" --streams ${STREAMS:-1,8} --temperature ${REUSE_TEMPS:-0 0.8} \
    --backend-sampling "${BACKEND_SAMPLING:-auto}" 2>/dev/null | tee -a "$OUT/cuda_graph_reuse${TAG:-}.jsonl"
}

# A random draft for speculation with the 1B shape's vocabulary: SmolLM2-135M's dimensions
# (576 hidden, 30 layers, 9 heads, 3 KV heads), the 1B checkpoint's tokenizer and config.
draft_model() {
  [ -e "$WORK/draft-135m-shape-q4_k_m.gguf" ] && return 0
  python3 - "$WORK/llama-1b-shape" "$WORK/draft-135m-shape" <<'PY'
import shutil, sys, torch, transformers
src, dst = sys.argv[1], sys.argv[2]
cfg = transformers.AutoConfig.from_pretrained(src)
cfg.update(dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                num_attention_heads=9, num_key_value_heads=3, head_dim=64))
torch.manual_seed(1)
transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).save_pretrained(dst)
for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
    shutil.copy(f"{src}/{name}", dst)
PY
  python3 -m converters.st2gguf "$WORK/draft-135m-shape" --outfile "$WORK/draft-135m-shape-q4_k_m.gguf" \
    --outtype q4_k_m --no-progress --force
}

# Speculative decoding (ggufworker bench --speculation) at SPEC_CLIENTS concurrent requests;
# SPEC_TARGETS, SPEC_SERVER_ARGS and TAG select variants; DRAFT=1 runs ours with the random
# draft model instead (target name "ggufworker").
spec() {
  local bin=$WORK/build/bin/llama-server c extra=()
  if [ -n "${DRAFT:-}" ]; then
    draft_model || return 1
    extra=(--spec-server-args="--spec-type draft --spec-draft-model $WORK/draft-135m-shape-q4_k_m.gguf")
  elif [ -n "${SPEC_SERVER_ARGS:-}" ]; then
    extra=(--spec-server-args="$SPEC_SERVER_ARGS")
  fi
  for c in ${SPEC_CLIENTS:-1}; do
    timeout ${SPEC_TIMEOUT:-300} python3 -m ggufworker.cli bench --speculation --model "$L1B" \
      --llama-server "$bin" --spec-clients $c --tokens 128 --runs "${RUNS:-3}" \
      --spec-targets "${SPEC_TARGETS:-ggufworker,ggufworker-ngram,llama-server,llama-server-ngram}" \
      "${extra[@]}" --json > "$OUT/spec${TAG:-}_c$c.json" 2> "$OUT/spec${TAG:-}_c$c.err"
    python3 - "$OUT/spec${TAG:-}_c$c.json" <<'PY'
import json, sys
try:
    r = json.load(open(sys.argv[1]))
except Exception as exc:
    print(sys.argv[1], "no result", exc); sys.exit(0)
for name, res in r["targets"].items():
    print(name, {k: (round(v["tok_s"]), v["copy_share"]) for k, v in res.items()})
print("ratios", {k: {w: round(x, 2) for w, x in v.items()} for k, v in r["ratios"].items()})
PY
  done
}

# Backend sampling on the GPU against the host chain: same seeds, same tokens?
sampling() {
  timeout 120 python3 scripts/sampling_check.py "$L1B" --requests 16 --tokens 64 2>/dev/null | tee "$OUT/cuda_sampling_check.json"
}

# The model-family tests on the GPU: their evidence lines feed docs/MODEL_SUPPORT.md's CUDA column.
support() {
  GGUFWORKER_SUPPORT_RESULTS=$OUT/cuda.jsonl GGUFWORKER_SUPPORT_BACKEND=cuda HF_HUB_OFFLINE=1 \
    GGUFWORKER_TEST_CACHE=$WORK/test-models timeout ${SUPPORT_TIMEOUT:-400} python3 -m pytest -q -p no:cacheprovider \
    ${SUPPORT_TESTS:-tests/converters/test_tiny_archs.py tests/converters/test_families_classic.py tests/converters/test_families_modern.py tests/converters/test_moe.py tests/converters/test_recurrent.py} \
    -k "not served" 2>&1 | tee "$OUT/cuda_support_tests.log" | tail -8
}

case "${1:-}" in
  build | pack | profile | timing | matrix | bench | tests | http | peer | sampling | support | reuse | spec | draft_model) for step in "$@"; do "$step" || exit 1; done ;;
  run) tests && bench && http ;;
  *) echo "usage: $0 build|timing|matrix|bench|tests|http ... (or run = tests bench http)" >&2; exit 2 ;;
esac
