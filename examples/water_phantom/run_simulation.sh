#!/usr/bin/env bash
# RUN_SCRIPT of the example campaign: bash run_simulation.sh <task index>
#
# Each task unpacks this folder and runs this script in it. The task's seed
# comes from SIM_SEED (set per task by the campaign tool); without it the
# simulation falls back to i:Ts/Seed in water_phantom.txt. Set PYTHON to use
# another interpreter than python3 (it needs numpy).
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: bash run_simulation.sh <task index>" >&2
    exit 2
fi
task_index=$1

# Run from this script's folder, wherever it is called from.
cd "$(dirname "${BASH_SOURCE[0]}")"

echo "Task index: ${task_index}"
echo "SIM_SEED: ${SIM_SEED:-<unset, using i:Ts/Seed from water_phantom.txt>}"
"${PYTHON:-python3}" pencil_beam.py water_phantom.txt
