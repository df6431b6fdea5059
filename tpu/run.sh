#!/usr/bin/env bash
# Run one ttcjax command on every worker of a TPU VM at once (multi-host JAX needs all hosts to run it).
#   TPU_NAME=my-v5e ZONE=us-west4-a bash tpu/run.sh generate --model ~/ckpt --mesh 4,2 --prompt "Q: 3+4="
# The ('data', 'model') mesh spans every chip of every host; --mesh DATA,MODEL must multiply to that count.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
ARGS=$(printf '%q ' "$@")
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command "
  ~/ttcjax-venv/bin/ttcjax $ARGS
"
