#!/usr/bin/env bash
# Set up (a .venv with the pinned requirements) and run the bundled example campaign:
# the runner, then the reducer. Extra arguments go to both scripts (e.g. --yes, --no-input).
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
.venv/bin/python batch_simulation_runner.py simconfig.json "$@"
.venv/bin/python batch_data_reducer.py simconfig.json "$@"
