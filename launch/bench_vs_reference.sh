#!/usr/bin/env bash
# plm-jax beside the PyTorch references on one GPU, in one run, as one table:
#   work | plm-jax | reference | ratio | target
# for GPT-2 124M (B=32, T=1024) and BERT-base MLM+NSP at T=128 (B=256) and T=512 (B=64).
#
#   cp -r ../shared/bench .bench && echo /.bench/ >> .git/info/exclude   # once
#   bash launch/bench_vs_reference.sh        # on the GPU machine, from any directory
#   TINY=1 bash launch/bench_vs_reference.sh # everything small on a CPU: checks the script
#   AB=1 bash launch/bench_vs_reference.sh   # also A/B each candidate GPU XLA flag on GPT-2
#
# Unattended on a fresh machine: the Python 3.12 wheels in .bench/wheels-py312 of what it lacks
# (ml_collections, grain, ...) are installed into .bench/site and put before PYTHONPATH (which
# is extended, never replaced). Logs go to $OUT (default /tmp/plm-jax-bench). Exit status 0 when
# every run gave its figures, 1 when any failed, 2 when the reference folder is missing. The
# GPT-2 run also leaves a profiler trace of three steps in $OUT/profile_gpt.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
OUT=${OUT:-/tmp/plm-jax-bench}
REF=${REF:-.bench}
LIMIT=${LIMIT:-300}
mkdir -p "$OUT"
rm -f "$OUT"/*.log
if [ ! -f "$REF/reference_h200.py" ]; then
  echo "bench_vs_reference.sh: $REF/reference_h200.py is missing; copy the reference folder:" \
    "cp -r ../shared/bench $REF" >&2
  exit 2
fi
if ! python3 -c "import ml_collections, grain" 2>/dev/null; then
  if ! ls "$REF"/wheels-py312/*.whl >/dev/null 2>&1; then
    echo "bench_vs_reference.sh: ml_collections/grain are missing and $REF/wheels-py312 has" \
      "no wheels to install" >&2
    exit 1
  fi
  site=$(cd "$REF" && pwd)/site
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" "$REF"/wheels-py312/*.whl || exit 1
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null

failed=0
run() {   # run NAME COMMAND...: its output to $OUT/NAME.log; a failure is counted and shown
  local name=$1
  shift
  echo "== $name" >&2
  local rc=0
  timeout "$LIMIT" "$@" >"$OUT/$name.log" 2>&1 || rc=$?
  if [ "$rc" != 0 ]; then
    echo "FAILED: $name (exit $rc$([ "$rc" = 124 ] && echo ": over ${LIMIT}s"); $OUT/$name.log" \
      "ends:)" >&2
    tail -n 5 "$OUT/$name.log" >&2
    failed=$((failed + 1))
  fi
}

bench=(python3 -m plm_jax.cli bench)
if [ "${TINY:-0}" = 1 ]; then
  steps=(--config.bench.steps=2 --config.bench.warmup_steps=1)
  gpt=(--config configs/gpt.py:tiny --config.train.batch_size=4 --config.data.max_seq_length=64)
  bert=("configs/bert.py:tiny" "32:4")
  ref=(--tiny --steps 2)
else
  steps=(--config.bench.steps=20 --config.bench.warmup_steps=3)
  gpt=(--config configs/gpt.py:124m --config.train.batch_size=32
       --config.data.max_seq_length=1024)
  bert=("configs/bert.py:base" "128:256" "512:64")
  ref=()
fi
# Every run uses what "auto" resolves to on this machine (bench prints it): the same step as
# `plm-jax train`. GPT-2 as nanoGPT benchmarks it (dropout 0); BERT with BERT's dropout 0.1.
run plm_gpt "${bench[@]}" "${gpt[@]}" "${steps[@]}" --config.model.dropout_rate=0.0 \
  --profile "$OUT/profile_gpt"
for shape in "${bert[@]:1}"; do
  run "plm_bert_t${shape%%:*}" "${bench[@]}" --config "${bert[0]}" "${steps[@]}" \
    --config.data.max_seq_length="${shape%%:*}" --config.train.batch_size="${shape##*:}"
done
run reference python3 "$REF/reference_h200.py" "${ref[@]}" --only env,torch_gpt,hf_bert

if [ "${AB:-0}" = 1 ]; then
  # Candidates from the fastest JAX GPU recipes (MaxText's and JAX-Toolbox's GPU scripts); each
  # is timed alone against the same step without it. launch/gpu_host.sh keeps the winners.
  for flag in --xla_gpu_enable_latency_hiding_scheduler=true --xla_gpu_triton_gemm_any=true \
      --xla_gpu_enable_triton_gemm=false --xla_gpu_enable_command_buffer= \
      --xla_gpu_enable_highest_priority_async_stream=true; do
    name=${flag#--xla_gpu_}
    XLA_FLAGS="${XLA_FLAGS:-} $flag" PLM_JAX_BENCH_TAG="$flag" run "ab_${name%%=*}" \
      "${bench[@]}" "${gpt[@]}" "${steps[@]}" --config.model.dropout_rate=0.0
  done
fi

python3 launch/bench_table.py "$OUT"/*.log || failed=$((failed + 1))
[ "$failed" = 0 ] || echo "bench_vs_reference.sh: $failed run(s) failed; logs in $OUT" >&2
[ "$failed" = 0 ]
