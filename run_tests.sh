#!/usr/bin/env bash
# Set up (a .venv with the pinned test requirements) and run the whole test suite.
# Extra arguments go to pytest (e.g. -k prompts, -x).
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
.venv/bin/python -m pytest -q "$@"
