#!/usr/bin/env bash
# Set up (a .venv with the pinned requirements) and run the bundled example campaign:
# the runner, then the reducer. Extra arguments go to both scripts (e.g. --yes, --no-input),
# each getting only the options it accepts: --overwrite and --rerun-failed go to the runner
# alone, --allow-partial and --allow-inconsistent to the reducer alone.
set -euo pipefail
cd "$(dirname "$0")"
RUNNER_ONLY=" --overwrite --rerun-failed "
REDUCER_ONLY=" --allow-partial --allow-inconsistent "
runner_args=()
reducer_args=()
for arg in "$@"; do
  case "$REDUCER_ONLY" in *" $arg "*) ;; *) runner_args+=("$arg") ;; esac
  case "$RUNNER_ONLY" in *" $arg "*) ;; *) reducer_args+=("$arg") ;; esac
done
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
.venv/bin/python batch_simulation_runner.py simconfig.json ${runner_args[@]+"${runner_args[@]}"}
.venv/bin/python batch_data_reducer.py simconfig.json ${reducer_args[@]+"${reducer_args[@]}"}
