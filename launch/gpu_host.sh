#!/usr/bin/env bash
# One multi-GPU host, no torchrun.
#
#   bash launch/gpu_host.sh train --config configs/gpt.py:355m,mesh=gpu8 --workdir runs/gpt
#
# Default: one process drives all the host's GPUs (what JAX does best on one host).
# PROCESS_PER_GPU=1: one process per GPU (CUDA_VISIBLE_DEVICES=i), joined by jax.distributed
# over localhost -- the layout of a GPU cluster, on one host, e.g. to debug it.
set -euo pipefail
cd "$(dirname "$0")/.."
gpus=$(nvidia-smi --list-gpus 2>/dev/null | wc -l)
if [ "$gpus" -lt 1 ]; then
  echo "gpu_host.sh: nvidia-smi lists no GPU" >&2
  exit 2
fi
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
# XLA flags of the fast JAX GPU recipes, kept only where an A/B on the device helped
# (AB=1 bash launch/bench_vs_reference.sh measures each; README "GPU XLA flags" has the
# results). The latency-hiding scheduler overlaps collectives with compute (JAX's and NVIDIA's
# recommended default for multi-GPU runs). PLM_JAX_GPU_XLA_FLAGS="" runs without any; flags
# already in XLA_FLAGS come after them, so they win (XLA takes the last of a repeated flag).
GPU_XLA_FLAGS=${PLM_JAX_GPU_XLA_FLAGS---xla_gpu_enable_latency_hiding_scheduler=true}
export XLA_FLAGS="$GPU_XLA_FLAGS ${XLA_FLAGS:-}"
if [ "${PROCESS_PER_GPU:-0}" = 1 ]; then
  exec python3 -m plm_jax.launch_local --platform gpu --num-processes "$gpus" \
    --devices-per-process 1 --heartbeat-timeout 60 -- python3 -m plm_jax.cli "$@"
fi
echo "gpu_host.sh: one process, $gpus GPU(s)"
exec python3 -m plm_jax.cli "$@"
