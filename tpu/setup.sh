#!/usr/bin/env bash
# Install ttcjax on every worker of a Cloud TPU VM (run from your workstation).
#   TPU_NAME=my-v5e ZONE=us-west4-a bash tpu/setup.sh [git-url-or-path]
# JAX needs its TPU build on TPU VMs: jax[tpu] brings libtpu. Nothing else differs from a CPU install.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
SRC=${1:-ttcjax}
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command "
  set -e
  python3 -m venv ~/ttcjax-venv
  ~/ttcjax-venv/bin/pip install -U pip
  ~/ttcjax-venv/bin/pip install 'jax[tpu]' '$SRC'
  ~/ttcjax-venv/bin/python -c 'import jax; print(jax.device_count(), \"devices:\", jax.devices()[0].device_kind)'
"
