#!/usr/bin/env bash
# The whole GPU check in one device call (one H200, <= 9.5 min): GPU tests, then the
# benchmarks in priority order, each writing its result JSON into $OUT (default /tmp/out),
# the full log in $OUT/suite.log, a compact summary on stdout.
#
#   bash benchmarks/gpu_suite.sh [--hf] [--no-tests]
#     --hf        also time HF transformers generate in the offline rows (slow; off by default)
#     --no-tests  skip the GPU tests (a short latency run then builds the JIT modules)
#   env: SUITE_BUDGET_S (default 555): every step's timeout is cut to what is left of it,
#        and a step that cannot get its minimum is skipped; PYTHON (default python3).
#
# At most 8 files come back from $OUT: suite.log + 7 JSONs (latency x2, offline x2,
# http-burst with its cold start, shared-prefix, ablations).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/out}
PY=${PYTHON:-python3}
BUDGET=${SUITE_BUDGET_S:-555}
START=$(date +%s)
HF="" TESTS=1
for a in "$@"; do
  case $a in
    --hf) HF="--hf-baseline" ;;
    --no-tests) TESTS=0 ;;
    *) echo "unknown option $a" >&2; exit 2 ;;
  esac
done
mkdir -p "$OUT"
LOG=$OUT/suite.log
STEPS=$(mktemp -d)
: >"$LOG"
export PYTHONUNBUFFERED=1
SUMMARY=()

step() {  # step NAME MAX_S MIN_S CMD...: run CMD under min(MAX_S, budget left) seconds
  local name=$1 max=$2 min=$3 left t t0 rc
  shift 3
  left=$((BUDGET - ($(date +%s) - START)))
  if ((left < min)); then
    SUMMARY+=("$(printf '%-22s skipped (%ss of budget left, needs %ss)' "$name" "$left" "$min")")
    return
  fi
  t=$((left < max ? left : max))
  t0=$(date +%s)
  echo "===== $name (timeout ${t}s): $*" >>"$LOG"
  timeout -k 10 "$t" "$@" >"$STEPS/$name.log" 2>&1
  rc=$?
  cat "$STEPS/$name.log" >>"$LOG"
  SUMMARY+=("$(printf '%-22s rc=%-3s %4ss%s' "$name" "$rc" "$(($(date +%s) - t0))" \
    "$( ((rc == 124 || rc == 137)) && echo ' TIMED OUT')")")
  if ((rc != 0)); then
    echo "----- $name failed (rc=$rc), last lines:"
    tail -n 15 "$STEPS/$name.log" | cut -c1-300
  fi
}

# ---- install (torch is preinstalled; our package and carried wheels) -----------------------
t0=$(date +%s)
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-deps --no-index --find-links .whl .whl/*.whl >>"$LOG" 2>&1
fi
$PY -m pip install -q --no-deps --no-build-isolation -e . >>"$LOG" 2>&1 || echo "pip install -e . failed"
SUMMARY+=("$(printf '%-22s        %4ss' install "$(($(date +%s) - t0))")")
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >>"$LOG" 2>&1

B=benchmarks
# A tokenizer covering all of Qwen3's ids: every sampled token streams as text (the demo one's
# 920 ids would make most tokens decode to "" and send no event).
TOK=$(mktemp -d)/tok
$PY $B/make_tokenizer.py --vocab 151936 --out "$TOK" >>"$LOG" 2>&1
ENGINE="--device cuda --dtype bfloat16 --attention-backend fa3,fi --cuda-graph-max-bs 256"
ENGINE="$ENGINE --max-running-requests 256 --memory-ratio 0.85"
REC="--out-dir $OUT"

# ---- GPU tests --------------------------------------------------------------------------------
# First on a fresh machine: FlashInfer compiles its JIT modules here (~4 min on an H200 host);
# the test model's head_dim 128 matches the benchmark shapes, so later steps reuse them. Only
# tests/worker/engine and tests/worker/layers hold GPU tests (the server tests import openai,
# absent on the device).
# Serially a fresh machine's JIT builds take the tests past 300 s (2026-12-02); with pytest-xdist
# (carry its and execnet's wheels in .whl) 4 workers build side by side: 75 tests in ~200-230 s.
XDIST=()
$PY -c "import xdist" >/dev/null 2>&1 && XDIST=(-n 4)
if ((TESTS)); then
  step gpu-tests 330 60 $PY -m pytest -q -m gpu tests/worker/engine tests/worker/layers -p no:cacheprovider -rA "${XDIST[@]}"
  tail -n 3 "$STEPS/gpu-tests.log" 2>/dev/null | sed 's/^/  tests: /'
else
  # Without the tests the first benchmark would build the JIT modules (FA3 prefill alone takes
  # minutes) inside its own short timeout and be killed mid-build, again in every later step:
  # build them here, under a timeout that fits, with a small run of the same kernels.
  # shellcheck disable=SC2086
  step jit-warm-up 330 60 $PY $B/latency.py --model qwen3-0.6b $ENGINE --output-len 8 --runs 3 --no-record
fi

# ---- benchmarks, most important first ----------------------------------------------------------
# shellcheck disable=SC2086  # $ENGINE / $REC / $HF are word lists
step latency-8b      150 45 $PY $B/latency.py --model llama-3.1-8b $ENGINE $REC
step latency-0.6b    60 25 $PY $B/latency.py --model qwen3-0.6b $ENGINE $REC
step offline-0.6b    75 30 $PY $B/offline.py --model qwen3-0.6b $ENGINE $HF $REC
step offline-8b      90 40 $PY $B/offline.py --model llama-3.1-8b $ENGINE $HF $REC

OFFLINE_06=$(ls "$OUT"/offline-256-qwen3-0.6b-*.json 2>/dev/null | head -n 1)
SERVER="--model-path $B/configs/qwen3-0.6b --dummy-weight --tokenizer-path $TOK $ENGINE --log-level info"
# One fresh server: the burst as its first traffic (cold start), then again warm (http-burst).
if [ -n "$OFFLINE_06" ]; then
  step http-burst-cold 170 60 $PY $B/serving.py --name http-burst --cold-start --client-procs 4 \
    --device cuda --model-label "qwen3-0.6b (dummy)" --launch "$SERVER" --offline-result "$OFFLINE_06" $REC
else  # offline-0.6b did not run: measure the offline figure here, before the server starts
  step http-burst-cold 200 90 $PY $B/serving.py --name http-burst --cold-start --client-procs 4 \
    --device cuda --model-label "qwen3-0.6b (dummy)" --launch "$SERVER" \
    --offline-args "--model qwen3-0.6b $ENGINE" $REC
fi

step shared-prefix   60 30 $PY $B/shared_prefix.py --model qwen3-0.6b $ENGINE $REC

# Ablations on offline-256 (0.6B); the base row is offline-0.6b's result above when there is one.
left=$((BUDGET - ($(date +%s) - START)))
BASE=() VARIANTS=base,no-overlap,no-graphs,fi,fa3
[ -n "$OFFLINE_06" ] && BASE=(--base-result "$OFFLINE_06")
step ablations $((left - 5)) 40 $PY $B/ablations.py --device cuda --variants $VARIANTS \
  --base-args "--model qwen3-0.6b $ENGINE" --timeout $(((left - 10) / 4 > 20 ? (left - 10) / 4 : 20)) \
  "${BASE[@]}" $REC

# ---- summary -------------------------------------------------------------------------------------
echo "===== steps (budget ${BUDGET}s, used $(($(date +%s) - START))s)"
printf '%s\n' "${SUMMARY[@]}"
echo "===== results in $OUT"
$PY $B/summarize.py "$OUT"
rm -rf "$STEPS"
