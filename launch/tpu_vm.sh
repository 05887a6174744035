#!/usr/bin/env bash
# Cloud TPU VMs: create (or reuse) a TPU VM or a multi-slice queued resource, install this
# checkout on every worker, run the same plm-jax command on all of them, collect the logs, tear
# down. Every worker runs one process; jax.distributed finds the others from the TPU metadata.
#
#   export TPU_NAME=plm-v4-32 ZONE=us-central2-b ACCELERATOR=v4-32
#   bash launch/tpu_vm.sh up            # create, or reuse if it exists
#   bash launch/tpu_vm.sh setup         # copy this checkout, pip install it on every worker
#   bash launch/tpu_vm.sh run train --config configs/bert.py:large,mesh=tpu-v4-32 \
#     --workdir gs://my-bucket/runs/bert-large
#   bash launch/tpu_vm.sh logs          # each worker's log into ./tpu-logs/
#
# `run` outlives preemptions: when the command exits 75 (a preemption notice: every worker saved
# a checkpoint at the same step; or a worker lost a peer: the last checkpoint is intact), 4
# (hung: stopped by the watchdog) or 255 (ssh lost the VM), it recreates the TPU VM if it is
# gone or preempted, installs this checkout again and runs the same command, which resumes
# from the last checkpoint; at most MAX_RESTARTS times (default 20; MAX_RESTARTS=0 runs once).
# The workdir must outlive the VM (a gs:// bucket).
#   bash launch/tpu_vm.sh down          # delete the VM / queued resource
#
# Multi-slice: NUM_SLICES=2 ACCELERATOR=v5litepod-256 ... creates a queued resource of 2 slices
# (TPU VMs $TPU_NAME-0, $TPU_NAME-1) and runs with the MEGASCALE_* variables that join them over
# the data-center network; use a config with DCN axes, e.g. mesh=tpu-2xv5e-256.
# Optional: PROJECT, RUNTIME (default v2-alpha-tpuv5-lite for v5e, tpu-ubuntu2204-base
# otherwise), SPOT=1, JAX_EXTRA (default "jax[tpu]").
set -euo pipefail
cd "$(dirname "$0")/.."

: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
NUM_SLICES=${NUM_SLICES:-1}
ACCELERATOR=${ACCELERATOR:-v4-8}
case "$ACCELERATOR" in
  v5litepod*|v5e*) RUNTIME=${RUNTIME:-v2-alpha-tpuv5-lite} ;;
  v5p*) RUNTIME=${RUNTIME:-v2-alpha-tpuv5} ;;
  *) RUNTIME=${RUNTIME:-tpu-ubuntu2204-base} ;;
esac
gc=(gcloud compute tpus)
common=(--zone "$ZONE")
if [ -n "${PROJECT:-}" ]; then
  common+=(--project "$PROJECT")
fi
LOG=plm-jax.log

nodes() {
  if [ "$NUM_SLICES" -gt 1 ]; then
    for ((i = 0; i < NUM_SLICES; i++)); do echo "$TPU_NAME-$i"; done
  else
    echo "$TPU_NAME"
  fi
}

exists() {
  if [ "$NUM_SLICES" -gt 1 ]; then
    "${gc[@]}" queued-resources describe "$TPU_NAME" "${common[@]}" >/dev/null 2>&1
  else
    "${gc[@]}" tpu-vm describe "$TPU_NAME" "${common[@]}" >/dev/null 2>&1
  fi
}

up() {
  if exists; then
    echo "reusing $TPU_NAME"
    return
  fi
  spot=()
  if [ "${SPOT:-0}" = 1 ]; then
    spot=(--spot)
  fi
  if [ "$NUM_SLICES" -gt 1 ]; then
    "${gc[@]}" queued-resources create "$TPU_NAME" "${common[@]}" \
      --accelerator-type "$ACCELERATOR" --runtime-version "$RUNTIME" \
      --node-count "$NUM_SLICES" --node-prefix "$TPU_NAME" "${spot[@]}"
    echo "waiting for the queued resource to become ACTIVE"
    until "${gc[@]}" queued-resources describe "$TPU_NAME" "${common[@]}" \
        --format='value(state.state)' | grep -q ACTIVE; do
      sleep 30
    done
  else
    "${gc[@]}" tpu-vm create "$TPU_NAME" "${common[@]}" \
      --accelerator-type "$ACCELERATOR" --version "$RUNTIME" "${spot[@]}"
  fi
}

on_all() {  # on_all NODE COMMAND: the command on every worker of one TPU VM
  "${gc[@]}" tpu-vm ssh "$1" "${common[@]}" --worker=all --command "$2"
}

setup() {
  archive=$(mktemp /tmp/plm-jax-XXXXXX.tgz)
  git ls-files -z | xargs -0 tar czf "$archive"
  for node in $(nodes); do
    "${gc[@]}" tpu-vm scp "$archive" "$node:plm-jax.tgz" "${common[@]}" --worker=all
    on_all "$node" "rm -rf plm-jax && mkdir plm-jax && tar xzf plm-jax.tgz -C plm-jax && \
      python3 -m pip install -q -U pip && \
      python3 -m pip install -q -e ./plm-jax '${JAX_EXTRA:-jax[tpu]}'"
  done
  rm -f "$archive"
}

run() {
  if [ "$#" -eq 0 ]; then
    echo "usage: tpu_vm.sh run train --config ... --workdir gs://..." >&2
    exit 2
  fi
  printf -v cmd '%q ' "$@"
  env_prefix=""
  coordinator=""
  if [ "$NUM_SLICES" -gt 1 ]; then
    coordinator=$("${gc[@]}" tpu-vm describe "$TPU_NAME-0" "${common[@]}" \
      --format='value(networkEndpoints[0].ipAddress)')
  fi
  slice=0
  pids=()
  for node in $(nodes); do
    if [ "$NUM_SLICES" -gt 1 ]; then
      env_prefix="MEGASCALE_COORDINATOR_ADDRESS=$coordinator:8080 MEGASCALE_PORT=8080 \
MEGASCALE_NUM_SLICES=$NUM_SLICES MEGASCALE_SLICE_ID=$slice"
    fi
    # Every worker runs the same command; its output goes to the terminal and ~/plm-jax.log.
    on_all "$node" "cd plm-jax && $env_prefix PLM_JAX_BREAK_LOCK=${PLM_JAX_BREAK_LOCK:-0} \
      PYTHONUNBUFFERED=1 python3 -m plm_jax.cli \
      $cmd 2>&1 | tee ~/$LOG; exit \${PIPESTATUS[0]}" &
    pids+=($!)
    slice=$((slice + 1))
  done
  # The run's status: the first a worker chose itself (1-127; 75 when it lost a peer: run
  # again) over a death by a signal or a lost ssh (128-255), which says nothing of what to do.
  status=0
  for pid in "${pids[@]}"; do
    code=0
    wait "$pid" || code=$?
    if [ "$code" -eq 0 ]; then
      continue
    fi
    if [ "$status" -eq 0 ] || { [ "$status" -ge 128 ] && [ "$code" -lt 128 ]; }; then
      status=$code
    fi
  done
  return "$status"
}

healthy() {  # the TPU VM / queued resource exists and is ready to run
  if [ "$NUM_SLICES" -gt 1 ]; then
    "${gc[@]}" queued-resources describe "$TPU_NAME" "${common[@]}" \
      --format='value(state.state)' 2>/dev/null | grep -q ACTIVE
  else
    "${gc[@]}" tpu-vm describe "$TPU_NAME" "${common[@]}" --format='value(state)' \
      2>/dev/null | grep -q READY
  fi
}

resilient_run() {  # run, and after a preemption or a hang run again (resuming)
  restarts=0
  while :; do
    status=0
    run "$@" || status=$?
    case "$status" in
      75|4|255) ;;
      *) return "$status" ;;
    esac
    if [ "$restarts" -ge "${MAX_RESTARTS:-20}" ]; then
      echo "stopped early (exit $status) after $restarts restart(s): giving up" >&2
      return "$status"
    fi
    restarts=$((restarts + 1))
    echo "stopped early (exit $status): restart $restarts, resuming from the last checkpoint" >&2
    if ! healthy; then
      down || true
      up
      setup
      # The old VM is gone, and its trainer with it: its lock on the workdir may be taken.
      export PLM_JAX_BREAK_LOCK=1
    fi
  done
}

logs() {
  mkdir -p tpu-logs
  for node in $(nodes); do
    workers=$("${gc[@]}" tpu-vm describe "$node" "${common[@]}" \
      --format='value(networkEndpoints.len())')
    for ((w = 0; w < ${workers:-1}; w++)); do
      "${gc[@]}" tpu-vm ssh "$node" "${common[@]}" --worker="$w" --command "cat ~/$LOG" \
        > "tpu-logs/$node-worker$w.log" || true
    done
  done
  echo "logs in tpu-logs/"
}

down() {
  if [ "$NUM_SLICES" -gt 1 ]; then
    "${gc[@]}" queued-resources delete "$TPU_NAME" "${common[@]}" --force --quiet
  else
    "${gc[@]}" tpu-vm delete "$TPU_NAME" "${common[@]}" --quiet
  fi
}

action=${1:-}
shift || true
case "$action" in
  up) up ;;
  setup) setup ;;
  run) resilient_run "$@" ;;
  logs) logs ;;
  down) down ;;
  all) up && setup && { resilient_run "$@" || status=$?; } ; logs; down; exit "${status:-0}" ;;
  *) echo "usage: tpu_vm.sh up|setup|run ARGS|logs|down|all ARGS" >&2; exit 2 ;;
esac
