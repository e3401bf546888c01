#!/usr/bin/env bash
# The project's one device recipe: set up, build llama.cpp, run the GPU checks and the comparison,
# write the results. Two halves, because the GPU machine has no network:
#
#   here (a machine with PyPI):  bash scripts/device_bench.sh carry
#       fills .device/ (git-ignored) with what the GPU machine lacks: wheels of transformers, gguf,
#       polib, diskcache and the server's (fastapi, uvicorn, pydantic), and llama-cpp-python's source (its vendored llama.cpp) slimmed to ~8 MB.
#   on the GPU machine, from the repository root, with .device carried:
#       bash scripts/device_bench.sh run [SUITE...]     in the foreground (one short call)
#       bash scripts/device_bench.sh start [SUITE...]   detached from a snapshot of the code, then
#       bash scripts/device_bench.sh wait [SECONDS]     watch it; each call packs what is done
#
# Suites (default: check compare):
#   check    lazymoe doctor, the machine's bandwidths, the GPU tests, llama.cpp's libstdc++ check
#            and a tiny model through the harness's llama.cpp runner with torch loaded first
#   compare  SHAPE (default qwen3-30b-a3b, random weights in /dev/shm) in each of FORMATS: lazymoe
#            rows at BUDGETS, then llama.cpp through the harness's runner: the thread count tuned,
#            --cpu-moe, and for each lazymoe row the smallest --n-cpu-moe whose peak VRAM is at most
#            lazymoe's (lazymoe.bench.llamacpp_tune); llama-bench of the same GGUF as a cross-check;
#            one table per format. bf16: lazymoe reads safetensors, llama.cpp a GGUF of the same
#            bits; a quantized format (q8_0, q4_0, q4_k_m): one GGUF written once, read by both
#   batch    lazymoe serve one request at a time vs batched (scripts/serve_load.py: 1-32 users) on one
#            GPU, then split over two GPUs when there are two (SERVE_SHAPE, SERVE_BUDGET per GPU)
#   kernels  the quantized experts' GPU tests and their kernels timed (scripts/bench_prompt_experts.py,
#            scripts/bench_triton_quant.py; KERNEL_BENCH=prompt the first only, 0 neither)
#   profile  where a decode step's time goes (python -m lazymoe.bench.profile, 8 layers)
#   batchprofile  where a batched step's time goes (python -m lazymoe.bench.batch_profile), on batch's model
#   share    the CPU's share of the misses A/B in one process: the share tuned and fixed
#            (scripts/bench_cpu_share.py; SHARE_REGIMES, default "independent real-text"), SHAPE in BF16
#
# llama.cpp is built ONCE, in the background while the first suites run, by CMake with the SYSTEM compiler (a wrapper compiler's own libstdc++
# crashed llama-cpp-python beside torch: lazymoe/bench/libstdcxx.py), CUDA for sm_90: the shared
# libraries llama-cpp-python's bindings load, llama-bench and llama-quantize.
# Results: $RESULTS (default /tmp/lazymoe-device/results), packed into $OUT/results.tar.gz for the
# device tool (8 files at most come back); unpack into data/results/ and name the files by machine.
# Knobs (environment): SHAPE, BUDGETS ("8", GB; each budget adds a --n-cpu-moe search of ~6 model
# loads), NEW_TOKENS (128), PROMPT_TOKENS (32), REPEATS (3), BENCH_ARGS (more `lazymoe bench` flags,
# e.g. a routing regime), TUNE_THREADS (thread counts to try; default half/all cores, all CPUs),
# PINS ("0"; "0 1" adds lazymoe rows with --pin-checkpoint, in bench-...-pinned.json), RESIDENT (1: a row with
# every expert in VRAM too, in the first PINS pass, and llama.cpp searched to its VRAM), KEEP (1: leave
# the quantized GGUF in /dev/shm for a later suite, e.g. SERVE_MODEL=/dev/shm/lazymoe-SHAPE-q4_0/model-q4_0.gguf),
# SERVE_TOKENS (32 new tokens a request), SERVE_REPEATS (2 runs a case), SERVE_MODEL (serve that file/folder instead of writing SERVE_SHAPE), SERVE_FORMAT (write SERVE_SHAPE as a GGUF
# of that type, in the background from the start, and serve it), KERNEL_BENCH (0: kernels' tests only; prompt: and the prompt kernels' timing; cpu: and the CPU kernels' only; bf16: and the BF16 CPU experts' only), KERNEL_K (their pytest -k), SERVE_ARGS (more `lazymoe serve` flags),
# BUILD_JOBS, BUILD_LLAMA (1; 0: suites that need no llama.cpp), PLACEMENTS ("fetch"; e.g. "fetch auto"), CROSS_CHECK (1; 0 skips llama-bench),
# FORMATS ("bf16"; e.g. "q8_0 q4_0": one results file each, bench-SHAPE-FORMAT.json). Time on an
# H200 (16 cores): setup ~5 min, check ~5, compare at one budget ~25 per format (a quantized
# GGUF of qwen3-30b-a3b takes ~6 min to write in q8_0/q4_0, q4_k_m too: the GPU quantizes).
set -uo pipefail
CARRY=${CARRY:-.device}
LLAMA_CPP_PYTHON_VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
WORK=${WORK:-/tmp/lazymoe-device}
RESULTS=${RESULTS:-$WORK/results}
SITE=$WORK/site; SRC=$WORK/src/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION; BUILD=$WORK/llama-build
SHAPE=${SHAPE:-qwen3-30b-a3b}; BUDGETS=${BUDGETS:-8}; M=${MODEL_DIR:-/dev/shm/lazymoe-$SHAPE}
PROTOCOL="--prompt-tokens ${PROMPT_TOKENS:-32} --new-tokens ${NEW_TOKENS:-128} --repeats ${REPEATS:-3} --warmup 1 --temperature 1 --timeout 900"
ts() { date -u +%T; }
log() { echo "device_bench: $* ($(ts))"; }

carry() {  # here, with network
  set -e
  grep -qx "/$CARRY/" .git/info/exclude 2>/dev/null || echo "/$CARRY/" >> .git/info/exclude
  mkdir -p "$CARRY/whl"
  local py=.venv/bin/python; [ -x $py ] || py=python3
  # the versions this checkout's environment holds: the GPU image has older transformers, no server
  local specs
  specs=$($py -c "import importlib.metadata as m
names = 'transformers gguf polib diskcache fastapi starlette uvicorn pydantic pydantic_core annotated-types typing-inspection opentelemetry-api'
print(' '.join(f'{n}=={m.version(n)}' for n in names.split()))")
  # shellcheck disable=SC2086
  $py -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform any -d "$CARRY/whl" $specs
  local tmp; tmp=$(mktemp -d)
  $py -m pip download -q --no-deps --no-binary=:all: -d "$tmp" "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION"
  tar xzf "$tmp"/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION.tar.gz -C "$tmp"
  local src="$tmp/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION" vendor
  vendor="$src/vendor/llama.cpp"
  find "$src" -name .git -prune -exec rm -rf {} +
  rm -rf "$src/docs" "$vendor"/docs "$vendor"/examples "$vendor"/media "$vendor"/models/*.gguf* \
    "$vendor"/tools/server/public* "$vendor"/tools/ui "$vendor"/gguf-py/tests \
    "$vendor"/ggml/src/{ggml-sycl,ggml-vulkan,ggml-opencl,ggml-cann,ggml-webgpu,ggml-hexagon,ggml-zdnn,ggml-openvino,ggml-virtgpu}
  tar czf "$CARRY/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION-slim.tar.gz" -C "$tmp" llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION
  rm -rf "$tmp"
  du -sh "$CARRY"/* "$CARRY"/whl/*
  echo "carry: done; on the device machine: carry [\"$CARRY\"] and run bash scripts/device_bench.sh run check"
}

setup() {  # on the device: the wheels now; llama.cpp's build in the background (need_llama waits)
  mkdir -p "$SITE" "$RESULTS" "$WORK/src"
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" "$CARRY"/whl/*.whl || return 1
  export PYTHONPATH="$SITE:$PWD" PYTHONUNBUFFERED=1
  if [ -x "$BUILD/bin/llama-bench" ] && [ -e "$SITE/llama_cpp/lib" ]; then log "llama.cpp already built"; return 0; fi
  [ "${BUILD_LLAMA:-1}" = 1 ] || { log "llama.cpp not built (BUILD_LLAMA=0)"; return 0; }
  build_llama > "$RESULTS/llama-build.log" 2>&1 &
  LLAMA_PID=$!
}

build_llama() {  # CMake, the system compiler, CUDA for sm_90; then llama-cpp-python's package over it
  [ -d "$SRC" ] || tar xzf "$CARRY/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION-slim.tar.gz" -C "$WORK/src" || return 1
  log "building llama.cpp (CUDA sm_90, system g++)"
  CC=/usr/bin/gcc CXX=/usr/bin/g++ CUDAHOSTCXX=/usr/bin/g++ \
  cmake -S "$SRC/vendor/llama.cpp" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DBUILD_SHARED_LIBS=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
  && cmake --build "$BUILD" -j "${BUILD_JOBS:-$(nproc)}" --target llama llama-bench llama-quantize || return 1
  # llama-cpp-python's Python package (pure ctypes) loading the libraries of this build
  rm -rf "$SITE/llama_cpp" && cp -r "$SRC/llama_cpp" "$SITE/" && ln -sfn "$BUILD/bin" "$SITE/llama_cpp/lib"
  log "llama.cpp built: $(ls "$BUILD"/bin | tr '\n' ' ')"
}

need_llama() {  # wait for the background build; say why when it failed
  [ -n "${LLAMA_PID:-}" ] && { wait "$LLAMA_PID"; LLAMA_PID=; }
  [ -x "$BUILD/bin/llama-bench" ] && [ -e "$SITE/llama_cpp/lib" ] && return 0
  log "llama.cpp is not built: $(tail -5 "$RESULTS/llama-build.log" | tr '\n' ' ')"; return 1
}

prewrite() {  # each quantized GGUF of `compare` (and batch's SERVE_FORMAT) written in the background on the last GPU
  local f gpu; gpu=$(( $(nvidia-smi -L 2>/dev/null | wc -l) - 1 )); (( gpu < 0 )) && gpu=0
  case " $* " in *batch*) if [ -n "${SERVE_FORMAT:-}" ] && [ -z "${SERVE_MODEL:-}" ]; then
    local s=${SERVE_SHAPE:-olmoe-1b-7b-shapes}
    log "writing $s $SERVE_FORMAT for batch in the background (GPU $gpu)"
    CUDA_VISIBLE_DEVICES=$gpu python3 -m lazymoe.bench.writer "$s" "/dev/shm/lazymoe-serve-$s-$SERVE_FORMAT" \
      --format "$SERVE_FORMAT" --device cuda > "$RESULTS/write-serve-$s.log" 2>&1 &
    SERVE_WRITER=$!
  fi ;; esac
  case " $* " in *compare*) ;; *) return 0 ;; esac
  for f in ${FORMATS:-bf16}; do
    [ "$f" = bf16 ] && continue
    log "writing $SHAPE $f in the background (GPU $gpu)"
    CUDA_VISIBLE_DEVICES=$gpu python3 -m lazymoe.bench.writer "$SHAPE" "$M-$f" --format "$f" --device cuda \
      > "$RESULTS/write-$SHAPE-$f.log" 2>&1 &
    WRITERS[$f]=$!
  done
}

suite_check() {
  nvidia-smi > "$RESULTS/nvidia-smi.txt" 2>&1
  python3 -m lazymoe doctor --role server > "$RESULTS/doctor.txt" 2>&1
  python3 -m lazymoe.hardware --measure --json > "$RESULTS/hardware-measure.json" 2> "$RESULTS/hardware-measure.err"
  python3 -m lazymoe.bench.bandwidth > "$RESULTS/bandwidths.json" 2>&1; cat "$RESULTS/bandwidths.json"
  # the tests that need no llama.cpp while it builds, then the ones that do
  timeout 600 python3 -m pytest -m gpu -q -n 8 -p no:cacheprovider tests/gpu tests/test_hardware.py \
    tests/test_store.py --ignore=tests/gpu/test_bench_gguf_gpu.py > "$RESULTS/gpu-tests.log" 2>&1
  log "gpu tests rc=$? $(tail -1 "$RESULTS/gpu-tests.log")"
  need_llama
  timeout 300 python3 -m pytest -m gpu -q -p no:cacheprovider tests/gpu/test_bench_gguf_gpu.py \
    tests/test_bench_llamacpp.py tests/test_libstdcxx.py > "$RESULTS/gpu-tests-llama.log" 2>&1
  log "gpu tests with llama.cpp rc=$? $(tail -1 "$RESULTS/gpu-tests-llama.log")"
  [ "${KERNEL_BENCH:-1}" = 1 ] || return 0
  timeout 300 python3 scripts/bench_triton_quant.py "$RESULTS/triton-quant-decode.json" > "$RESULTS/triton-quant-decode.log" 2>&1
  log "quantized Triton kernels rc=$?: $(tail -8 "$RESULTS/triton-quant-decode.log" | tr '\n' ' ')"
  python3 -m lazymoe.bench.writer tiny-random "$WORK/tiny" --device cuda > /dev/null
  need_llama || return 1
  # torch first, as in the harness: the case the libstdc++ clash crashed
  timeout 180 python3 -X faulthandler -c "
import torch; torch.zeros(1, device='cuda')
from lazymoe.bench.libstdcxx import check_no_clash
for e in check_no_clash(): print(e.path.name, e.std_symbols, 'std:: symbols, runtime copy:', e.carries_runtime)
from lazymoe.bench.llamacpp import LlamaCppConfig as C, LlamaCppRunner as R
for n in (None, 1):
    with R(C('$WORK/tiny/model-bf16.gguf', cpu_moe=True, n_cpu_moe=n)) as r:
        print('n_cpu_moe', n, 'tokens', list(r.stream(list(range(40, 60)), 4)), 'gpu offload', r.gpu_offload)
" > "$RESULTS/llama-check.txt" 2>&1
  log "llama.cpp runner check rc=$?: $(tail -2 "$RESULTS/llama-check.txt" | tr '\n' ' ')"
}

suite_compare() {
  local f
  for f in ${FORMATS:-bf16}; do log "compare $SHAPE $f"; if [ "$f" = bf16 ]; then compare_bf16; else compare_gguf "$f"; fi; done
}

compare_bf16() {  # lazymoe reads safetensors, llama.cpp a GGUF of the same bits (one file in RAM at a time)
  local out="$RESULTS/bench-$SHAPE.json" g
  python3 -m lazymoe.bench.writer "$SHAPE" "$M" --only safetensors --device cuda 2>&1 | tail -1
  lazymoe_rows "$M" "$out" "random weights, shapes of $SHAPE"
  rm -f "$M"/*.safetensors  # RAM: one copy of the weights at a time (the same bits, same seed)
  python3 -m lazymoe.bench.writer "$SHAPE" "$M" --only gguf --device cuda 2>&1 | tail -1
  g=$(ls "$M"/*.gguf | head -1)
  llama_rows "$(rows_file "$out")" "$g" "$SHAPE" --gguf "$g"
  python3 -m lazymoe bench --report $(ls "$out" "${out%.json}"-pinned.json 2>/dev/null) | tee "$RESULTS/table-$SHAPE.md"
  rm -rf "$M"
}

compare_gguf() {  # one quantized GGUF, written once, read by both engines (lazymoe keeps its experts quantized)
  local f=$1 d="$M-$1" out="$RESULTS/bench-$SHAPE-$1.json" g
  if [ -n "${WRITERS[$f]:-}" ]; then wait "${WRITERS[$f]}"; tail -1 "$RESULTS/write-$SHAPE-$f.log"
  else python3 -m lazymoe.bench.writer "$SHAPE" "$d" --format "$f" --device cuda 2>&1 | tail -1; fi
  g="$d/model-$f.gguf"; [ -f "$g" ] || { log "no $g: $f skipped"; return 1; }
  lazymoe_rows "$g" "$out" "random weights, shapes of $SHAPE, $f GGUF read by both engines"
  llama_rows "$(rows_file "$out")" "$g" "$SHAPE-$f"  # no --gguf: the tuner reads the file the lazymoe rows read
  python3 -m lazymoe bench --report $(ls "$out" "${out%.json}"-pinned.json 2>/dev/null) | tee "$RESULTS/table-$SHAPE-$f.md"
  [ "${KEEP:-0}" = 1 ] || rm -rf "$d"
}

rows_file() {  # OUT: the lazymoe rows llama.cpp is tuned to (PINS=1 alone: the pinned ones)
  if [ -f "$1" ]; then echo "$1"; else echo "${1%.json}-pinned.json"; fi
}

lazymoe_rows() {  # MODEL OUT NOTE: lazymoe's rows, once per PINS value (1: page-locked checkpoint, own file)
  local model=$1 out=$2 note=$3 pin PINS_FIRST
  # placement cpu/auto rows compute on the CPU: not beside llama.cpp's build (which they need next anyway)
  [ -n "${LLAMA_PID:-}" ] && { log "waiting for llama.cpp's build before the lazymoe rows"; need_llama; }
  PINS_FIRST=$(echo ${PINS:-0} | cut -d' ' -f1)  # the pass that also runs RESIDENT's row
  for pin in ${PINS:-0}; do
    local o=$out extra=()
    [ "$pin" = 1 ] && { o="${out%.json}-pinned.json"; extra=(--pin-checkpoint); }
    log "lazymoe rows on $model${extra[*]:+ (${extra[*]})}"
    # shellcheck disable=SC2086
    # RESIDENT=1: also every expert in VRAM (the first PINS pass only; PINS=1: through
    # device-cache, the GPU keeping the cache); the tuner then finds llama.cpp's
    # --n-cpu-moe for that row's VRAM too (0 when the whole model fits): issue 16's resident target
    local resident=(--no-resident); [ "${RESIDENT:-0}" = 1 ] && [ "$pin" = "${PINS_FIRST}" ] && resident=()
    python3 -m lazymoe bench --model "$model" --engines lazymoe --placement ${PLACEMENTS:-fetch} --budgets $BUDGETS \
      "${resident[@]}" "${extra[@]}" $PROTOCOL ${BENCH_ARGS:-} --note "$note" --out "$o" 2>&1 | grep "^|"
  done
}

llama_rows() {  # RESULTS_JSON GGUF MODEL_NAME [--gguf GGUF]: llama.cpp tuned at lazymoe's VRAM, llama-bench cross-check
  local out=$1 g=$2 name=$3 lb="$BUILD/bin/llama-bench"; shift 3
  need_llama || return 1
  log "llama.cpp rows: threads tuned, --cpu-moe, --n-cpu-moe at lazymoe's peak VRAM"
  # shellcheck disable=SC2086
  python3 -m lazymoe.bench.llamacpp_tune "$out" "$@" --timeout 900 ${TUNE_THREADS:+--threads $TUNE_THREADS}
  log "llama-bench cross-check"
  local ncmoe
  ncmoe=$(python3 -c "import json; d = json.load(open('$out'))['llama_tuning']; print(d['best_threads'] or '', *[s['n_cpu_moe'] for s in d['searches'] if s['n_cpu_moe'] is not None])")
  set -- $ncmoe; local t=${1:-}; shift || true
  local first=cpu-moe
  [ "${CROSS_CHECK:-1}" = 1 ] || { set --; first=; log "no llama-bench cross-check (CROSS_CHECK=0)"; }
  for n in $first "$@"; do
    local args=(-ot "ffn_(up|down|gate)_exps=CPU"); [ "$n" = cpu-moe ] || args=(-ncmoe "$n")
    local cmd=("$lb" -m "$g" -ngl 99 "${args[@]}" ${t:+-t "$t"} -p "${PROMPT_TOKENS:-32}" -n "${NEW_TOKENS:-128}" -r 3 -o json)
    timeout 900 "${cmd[@]}" > "$WORK/lb-$n.json" 2> "$WORK/lb-$n.err" || { tail -3 "$WORK/lb-$n.err"; continue; }
    python3 -m lazymoe.bench.llamabench "$WORK/lb-$n.json" --model "$name" --routing model-own --into "$out" \
      --command "${cmd[*]}" --note "llama-bench (same build, same GGUF): a cross-check of the harness's llama.cpp rows"
  done
}

suite_batch() {  # lazymoe serve one request at a time vs batched, on one GPU, then split over two
  local s=${SERVE_SHAPE:-olmoe-1b-7b-shapes} d="/dev/shm/lazymoe-serve-${SERVE_SHAPE:-olmoe-1b-7b-shapes}" n
  if [ -n "${SERVE_MODEL:-}" ]; then d=$SERVE_MODEL; s=$(basename "$(dirname "$d")")
    local pid; for pid in "${WRITERS[@]}"; do wait "$pid"; done  # compare's GGUF, if it is that one
  elif [ -n "${SERVE_FORMAT:-}" ]; then  # the GGUF prewrite started
    wait "${SERVE_WRITER:-}"; tail -1 "$RESULTS/write-serve-$s.log"
    d="/dev/shm/lazymoe-serve-$s-$SERVE_FORMAT/model-$SERVE_FORMAT.gguf"; s="$s-$SERVE_FORMAT"
  else python3 -m lazymoe.bench.writer "$s" "$d" --only safetensors --device cuda 2>&1 | tail -1; fi
  # shellcheck disable=SC2206
  local common=(--model "$d" --device cuda --vram-budget "${SERVE_BUDGET:-5GiB}" --max-tokens "${SERVE_TOKENS:-32}"
                --repeats "${SERVE_REPEATS:-2}" ${SERVE_ARGS:-}
                --note "random weights, shapes of $s: routing has far more reuse than real text; ${SERVE_BUDGET:-5GiB} per GPU ${SERVE_ARGS:-}")
  timeout 540 python3 scripts/serve_load.py "${common[@]}" --max-batch 1 32 --users 1 4 16 32 \
    --out "$RESULTS/serve-gpu-$s.json" 2>&1 | grep --line-buffered -v "it/s]"
  log "serve load one GPU rc=$?"
  n=$(nvidia-smi -L 2>/dev/null | wc -l)
  if (( n >= 2 )); then
    timeout 300 python3 scripts/serve_load.py "${common[@]}" --gpus 0,1 --max-batch 32 --users 1 16 \
      --out "$RESULTS/serve-gpu2-$s.json" 2>&1 | grep --line-buffered -v "it/s]"
    log "serve load two GPUs rc=$?"
  fi
  [ -n "${SERVE_MODEL:-}" ] || rm -rf "${d%/model-*.gguf}"
}

suite_batchprofile() {  # where a batched step's time goes (lazymoe.bench.batch_profile), on batch's model
  local s=${SERVE_SHAPE:-olmoe-1b-7b-shapes} d
  if [ -n "${SERVE_MODEL:-}" ]; then d=$SERVE_MODEL
  else wait "${SERVE_WRITER:-}" 2>/dev/null; d="/dev/shm/lazymoe-serve-$s-${SERVE_FORMAT:-q4_0}/model-${SERVE_FORMAT:-q4_0}.gguf"; fi
  # shellcheck disable=SC2086
  timeout 420 python3 -m lazymoe.bench.batch_profile --model "$d" --device cuda --vram-budget "${SERVE_BUDGET:-5GiB}" \
    ${SERVE_ARGS:-} --compare-host --out "$RESULTS/batch-profile.json" > "$RESULTS/batch-profile.log" 2>&1
  log "batch profile rc=$? $(grep -E "users|Error" "$RESULTS/batch-profile.log" | tr '\n' ' ')"
}

suite_kernels() {  # quantized experts on the GPU: correctness first, then the kernels' time per layer
  timeout 420 python3 -m pytest -m gpu -q -n 4 -p no:cacheprovider ${KERNEL_K:+-k "$KERNEL_K"} \
    tests/gpu/test_triton_quant_gpu.py tests/gpu/test_triton_grouped_gpu.py tests/gpu/test_segments_quant_gpu.py tests/gpu/test_placement_quant_gpu.py tests/gpu/test_device_cache_gpu.py \
    tests/test_gguf_torch_quant.py > "$RESULTS/gpu-tests-kernels.log" 2>&1
  log "quantized GPU tests rc=$? $(tail -1 "$RESULTS/gpu-tests-kernels.log")"
  [ "${KERNEL_BENCH:-1}" = 0 ] && return 0
  if [ "${KERNEL_BENCH:-1}" = bf16 ]; then  # the BF16 CPU experts alone, with no compiler running beside them
    [ -n "${LLAMA_PID:-}" ] && need_llama; suite_bf16_cpu; return 0
  fi
  [ "${KERNEL_BENCH:-1}" = cpu ] || suite_kernels_gpu_timing || return 0
  [ -n "${LLAMA_PID:-}" ] && need_llama  # no compiler beside the CPU benches
  # the CPU path's quantized matmuls: stored bytes read per second against the machine's RAM read
  # (issue 16: >= 50%), both past the CPU's cache; 3 experts a call (a layer's CPU share) and 8
  timeout 480 python3 -m lazymoe.quant.expert --threads 1,"$(nproc)" --formats q8_0,q4_0,q4_k,q6_k --activations int8 --together 3,8 --json "$RESULTS/quant-cpu-kernels.json" > "$RESULTS/quant-cpu-kernels.log" 2>&1
  log "quantized CPU kernels rc=$?: $(tail -6 "$RESULTS/quant-cpu-kernels.log" | tr '\n' ' ')"
  # the kernels' unit of parallel work: kernels_cpu.row_chunk against ROW_CHUNK rows, interleaved
  timeout 600 python3 scripts/bench_row_chunk.py "$(nproc)" "$RESULTS/row-chunk-ab.json" > "$RESULTS/row-chunk-ab.log" 2>&1
  log "row_chunk A/B rc=$?: $(tr '\n' ' ' < "$RESULTS/row-chunk-ab.log" | cut -c1-600)"
  suite_bf16_cpu
}

suite_bf16_cpu() {  # BF16 experts on the CPU (placement cpu/auto with a BF16 checkpoint): torch against kernels_bf16
  timeout 240 python3 scripts/bench_bf16_cpu.py "$RESULTS/bf16-cpu-experts.json" 1,8,16 > "$RESULTS/bf16-cpu-experts.log" 2>&1
  log "BF16 CPU experts rc=$?: $(tail -6 "$RESULTS/bf16-cpu-experts.log" | tr '\n' ' ')"
  # numba's pool: the region back to back and after idle gaps (a wake-up's cost), per threading layer
  OUT=$RESULTS timeout 300 python3 scripts/bench_bf16_threads.py > "$RESULTS/bf16-threads.log" 2>&1
  log "numba's threads rc=$?: $(head -1 "$RESULTS/bf16-threads.log" | cut -c1-600)"
}

suite_share() {  # the CPU's share of the misses, A/B in one process (scripts/bench_cpu_share.py), SHAPE in BF16
  [ -f "$M/model.safetensors" ] || python3 -m lazymoe.bench.writer "$SHAPE" "$M" --only safetensors --device cuda 2>&1 | tail -1
  # shellcheck disable=SC2086
  OUT=$RESULTS timeout 900 python3 scripts/bench_cpu_share.py "$M" ${SHARE_REGIMES:-independent real-text} > "$RESULTS/cpu-share-ab.log" 2>&1
  log "CPU share A/B rc=$?: $(grep '^{' "$RESULTS/cpu-share-ab.log" | tr '\n' ' ' | cut -c1-1500)"
}

suite_kernels_gpu_timing() {  # the GPU kernels' time per layer; false (stop there) for KERNEL_BENCH=prompt
  timeout 300 python3 scripts/bench_prompt_experts.py "$RESULTS/prompt-experts.json" > "$RESULTS/prompt-experts.log" 2>&1
  log "prompt experts (grouped vs per pair) rc=$?: $(tail -15 "$RESULTS/prompt-experts.log" | tr '\n' ' ')"
  [ "${KERNEL_BENCH:-1}" = prompt ] && return 1  # KERNEL_BENCH=prompt: only a prompt's kernels
  timeout 300 python3 scripts/bench_triton_quant.py "$RESULTS/triton-quant-decode.json" > "$RESULTS/triton-quant-decode.log" 2>&1
  log "quantized Triton kernels rc=$?: $(tail -12 "$RESULTS/triton-quant-decode.log" | tr '\n' ' ')"
}

suite_profile() {
  timeout 540 python3 -m lazymoe.bench.profile --layers 8 --model "$WORK/prof" --hf --out "$RESULTS/profile-decode-8layers.json" \
    > "$RESULTS/profile.log" 2>&1
  log "profile rc=$?"; rm -rf "$WORK/prof"
}

run_suites() {
  declare -gA WRITERS=()
  setup || { log "SETUP FAILED"; echo "DEVICE_BENCH FAILED"; return 1; }
  prewrite "${@:-check compare}"
  for suite in "${@:-check compare}"; do
    for s in $suite; do log "suite $s"; "suite_$s"; done
  done
  echo "DEVICE_BENCH DONE $(ts)"
}

pack() { [ -n "${OUT:-}" ] && tar czf "$OUT/results.tar.gz" -C "$RESULTS" . 2>/dev/null; }

case "${1:-}" in
  carry) carry ;;
  run) shift; run_suites "$@"; pack ;;
  start)  # a snapshot of the code, so later calls (which re-send the working tree) do not change it
    shift; rm -rf "$WORK/repo" && mkdir -p "$WORK/repo" "$RESULTS"
    cp -r lazymoe scripts tests data pyproject.toml "$CARRY" "$WORK/repo/"
    (cd "$WORK/repo" && setsid nohup bash scripts/device_bench.sh run "$@" > "$RESULTS/device_bench.log" 2>&1 < /dev/null &)
    sleep 5; bash "$0" wait "${WAIT_S:-540}" ;;
  wait)
    start=$(date +%s)
    while (( $(date +%s) - start < ${2:-540} )); do
      grep -q "DEVICE_BENCH \(DONE\|FAILED\)" "$RESULTS/device_bench.log" 2>/dev/null && break; sleep 5
    done
    pack; grep -v "it/s\]" "$RESULTS/device_bench.log" | tail -40 ;;
  *) sed -n '2,35p' "$0"; exit 2 ;;
esac
