#!/usr/bin/env bash
# Device call 1: snapshot the code (later calls re-sync the working tree, which others keep editing),
# start the pipeline detached, then watch it for up to $1 seconds. Later calls: bash scripts/gpu/wait.sh
set -uo pipefail
rm -rf /tmp/h7repo /tmp/h7res && mkdir -p /tmp/h7repo/.device /tmp/h7res
cp -r lazymoe scripts tests data pyproject.toml /tmp/h7repo/ && cp -r .device/h7 /tmp/h7repo/.device/
cd /tmp/h7repo
setsid nohup bash scripts/gpu/${PIPELINE:-pipeline.sh} > /tmp/h7res/pipeline.log 2>&1 < /dev/null &
sleep 3
bash scripts/gpu/wait.sh "${1:-540}"
