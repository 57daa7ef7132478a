#!/usr/bin/env bash
# The one GPU check: run from the repository root on the GPU machine (the package is not
# installed there; everything runs with PYTHONPATH=$PWD).
#
#   bash benchmarks/cuda_check.sh            # everything, ~3-5 minutes, hard cap TOTAL_S
#   QUICK=1 bash benchmarks/cuda_check.sh    # syntax/paths check: the suite step runs only
#                                            # tests/gpu/test_cuda.py and no CPU timing is run
#
# Steps: machine info; tests/gpu/test_cuda.py; the whole suite (-n 8 with pytest-xdist);
# `gradtool check` timings of the benchmark MLPs and three real models on cuda, and of two
# MLPs on the cpu. Everything is printed and, when $OUT is set, also written to
# $OUT/log.txt (the JSON reports stay in a temporary folder; the last step summarizes
# them). Each step has its own timeout, and no step may start past
# the overall deadline, so the script always ends within TOTAL_S (+ a few seconds).
set -u -o pipefail
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

PY=${PYTHON:-python3}
QUICK=${QUICK:-0}
TOTAL_S=${TOTAL_S:-330}
STARTED=$(date +%s)

if [ ! -f gradcheck_tool/__init__.py ] || [ ! -f tests/gpu/test_cuda.py ]; then
    echo "run this from the repository root (gradcheck_tool/ and tests/ not found in $PWD)" >&2
    exit 2
fi

# the check reports stay on the machine (the summary step prints them): the device tool
# brings back at most 8 files from $OUT, and the log must be one of them
[ -n "${OUT:-}" ] && mkdir -p "$OUT"
REPORTS=$(mktemp -d "${TMPDIR:-/tmp}/gradtool_cuda.XXXXXX")

# `gradtool` on PATH without installing the package (the tests use `python -m gradcheck_tool`;
# this is for anything that calls the console script)
SHIM=$(mktemp -d "${TMPDIR:-/tmp}/gradtool_bin.XXXXXX")
printf '#!/bin/sh\nexec %s -m gradcheck_tool "$@"\n' "$(command -v "$PY")" > "$SHIM/gradtool"
chmod +x "$SHIM/gradtool"
export PATH="$SHIM:$PATH"

FAILED=()

# step NAME LIMIT_S CMD...: run CMD under `timeout`, capped by the overall deadline; print
# its exit status and wall time.
step() {
    local name=$1 limit=$2
    shift 2
    local left=$((TOTAL_S - ($(date +%s) - STARTED)))
    if [ "$left" -lt 15 ]; then
        echo "=== $name: SKIPPED (overall deadline: ${left}s left)"
        FAILED+=("$name(skipped)")
        return 0
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo
    echo "=== $name (timeout ${limit}s): $*"
    local t0 t1 rc
    t0=$(date +%s.%N)
    timeout -k 5 "$limit" "$@"
    rc=$?
    t1=$(date +%s.%N)
    local wall
    wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
    case $rc in
        124 | 137) echo "=== $name: TIMED OUT after ${wall}s" ;;
        *) echo "=== $name: exit $rc, ${wall}s wall" ;;
    esac
    [ "$rc" -ne 0 ] && FAILED+=("$name(exit $rc)")
    return 0
}

main() {
echo "=== gradtool cuda_check.sh  $(date -u +%Y-%m-%dT%H:%M:%SZ)  QUICK=$QUICK  in $PWD"
git log -1 --oneline 2>/dev/null || true
git status --short 2>/dev/null | head -20 || true
if command -v nvidia-smi > /dev/null; then
    nvidia-smi -L
    nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv || true
else
    echo "nvidia-smi: not found"
fi
echo "cpus: $(nproc)"
step "versions" 60 "$PY" - << 'EOF'
import importlib.metadata, platform, sys
import torch
print("python", sys.version.split()[0], platform.machine())
print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())
print("cuda available:", torch.cuda.is_available(), "devices:", torch.cuda.device_count())
if torch.cuda.is_available():
    print("device 0:", torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0))
for name in ("numpy", "typer", "rich", "pytest", "pytest-xdist", "matplotlib"):
    try:
        print(name, importlib.metadata.version(name))
    except importlib.metadata.PackageNotFoundError:
        print(f"{name}: NOT INSTALLED")
EOF

# 1. the GPU tests (all of them: GPU time is scarce, one run must show every failure)
step "test_cuda" 150 "$PY" -m pytest -q -rfEs tests/gpu/test_cuda.py -p no:cacheprovider

# 2. the whole suite with CUDA visible (8 workers, 2 torch threads each)
if "$PY" -c "import xdist" 2> /dev/null; then
    PARALLEL=(-n 8)
else
    echo "pytest-xdist is not installed: the suite runs in one process"
    PARALLEL=()
fi
if [ "$QUICK" = 1 ]; then
    SUITE=(tests/gpu/test_cuda.py)
else
    SUITE=(tests)
fi
step "suite" 170 env OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 \
    "$PY" -m pytest -q -rfE ${PARALLEL[@]+"${PARALLEL[@]}"} "${SUITE[@]}" -p no:cacheprovider \
    --durations=10

# 3. timings: a fresh process each, imports included
bench() {
    local label=$1 device=$2
    shift 2
    step "time $label --device $device" 90 env COLUMNS=120 NO_COLOR=1 \
        "$PY" -m gradcheck_tool check "$@" --device "$device" \
        --json "$REPORTS/check_${label}_${device}.json"
}
bench mlp_big cuda benchmarks/models/mlp_big.py
bench mlp_35k_full cuda benchmarks/models/mlp_35k.py --full
bench mlp_136k_full cuda benchmarks/models/mlp_136k.py --full
bench transformer cuda tests/fixtures/correct/transformer_dropout.py
bench lstm cuda tests/fixtures/correct/lstm_tokens.py
bench convnet cuda tests/fixtures/correct/conv_pool_gelu.py
if [ "$QUICK" = 1 ]; then
    echo "=== QUICK=1: the cpu timings are not run"
else
    bench mlp_big cpu benchmarks/models/mlp_big.py
    bench mlp_35k_full cpu benchmarks/models/mlp_35k.py --full
fi
step "report summary" 30 "$PY" - "$REPORTS" << 'EOF'
import json, pathlib, sys
for path in sorted(pathlib.Path(sys.argv[1]).glob("check_*.json")):
    r = json.loads(path.read_text())
    bad = [x["name"] for x in r["results"] if not x["passed"]]
    print(f"{path.stem:28s} passed={r['passed']} device={r.get('device')} "
          f"evaluation={r['evaluation']} check_seconds={r['seconds']} failing={bad} "
          f"fallback={r['fallback_reason']}")
EOF

echo
echo "=== done in $(($(date +%s) - STARTED))s; steps not clean: ${FAILED[*]:-none}"
[ ${#FAILED[@]} -eq 0 ]
}

if [ -n "${OUT:-}" ]; then
    main 2>&1 | tee -a "$OUT/log.txt"
    rc=$?
else
    main
    rc=$?
fi
rm -rf "$SHIM"
exit $rc
