#!/usr/bin/env bash
# plm-jax bench beside the PyTorch reference figures, on one GPU, in one run.
#
#   cp -r ../shared/bench .bench        # the reference script (ignored by git)
#   bash launch/bench_vs_reference.sh   # OUT=dir keeps the logs; TINY=1 checks it on a CPU
#
# If ml_collections is missing on the GPU machine, put its wheel in .whl/ (see README).
set -u
OUT=${OUT:-/tmp/plm-jax-bench}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1 && ! python3 -c "import ml_collections" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:-}:$PWD" PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
nvidia-smi --query-gpu=name,memory.total --format=csv 2>/dev/null

bench=(python3 -m plm_jax.cli bench)
if [ "${TINY:-0}" = 1 ]; then
  common=(--config.model.dtype=bfloat16 --config.mesh.fsdp=1 --config.bench.steps=1
          --config.bench.warmup_steps=1)
  gpt=(--config.train.batch_size=2 --config.data.max_seq_length=128)
  bert=(--config.train.batch_size=2)
  ref=(--tiny)
else
  common=(--config.model.dtype=bfloat16 --config.model.attention_impl=cudnn
          --config.mesh.fsdp=1 --config.bench.steps=20 --config.bench.warmup_steps=3)
  gpt=(--config.train.batch_size=32 --config.data.max_seq_length=1024)
  bert=(--config.train.batch_size=256 --config.data.max_seq_length=128)
  ref=()
fi
# GPT-2 124M as nanoGPT benchmarks it (dropout 0); BERT-base with BERT's hidden dropout 0.1.
timeout 240 "${bench[@]}" --config configs/gpt.py:124m "${gpt[@]}" "${common[@]}" \
  --config.model.dropout_rate=0.0 2>&1 | tee "$OUT/plm_gpt.log" | tail -3
timeout 240 "${bench[@]}" --config configs/bert.py:base "${bert[@]}" "${common[@]}" \
  --config.train.prng_impl=rbg 2>&1 | tee "$OUT/plm_bert.log" | tail -3
timeout 300 python3 .bench/reference_h200.py "${ref[@]}" --only env,torch_gpt,hf_bert 2>&1 \
  | grep '^{' | tee "$OUT/reference.log"
