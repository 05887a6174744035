#!/usr/bin/env bash
# N plm-jax processes on this machine, each with its own simulated CPU devices, as one
# multi-host run (jax.distributed over localhost): debug multi-host logic on a laptop.
#
#   bash launch/local.sh train --config configs/bert.py:tiny --workdir runs/bert-2proc
#   PROCESSES=4 DEVICES=2 bash launch/local.sh train --config configs/gpt.py:tiny --workdir runs/g
#
# Output lines are prefixed with the process index; LOG_DIR=dir also keeps process_<i>.log.
set -euo pipefail
cd "$(dirname "$0")/.."
args=(--num-processes "${PROCESSES:-2}" --devices-per-process "${DEVICES:-4}")
if [ -n "${LOG_DIR:-}" ]; then
  args+=(--log-dir "$LOG_DIR")
fi
exec python3 -m plm_jax.launch_local "${args[@]}" -- python3 -m plm_jax.cli "$@"
