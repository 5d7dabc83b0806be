#!/usr/bin/env bash
# Set up (a .venv with the pinned test requirements) and run the whole test suite.
# Extra arguments go to pytest (e.g. -k prompts, -x).
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
# Azurite (Microsoft's Azure Storage emulator) for the storage tests, pinned in package-lock.json.
if [ ! -x node_modules/.bin/azurite-blob ]; then
  npm ci --no-audit --no-fund --loglevel=error
fi
.venv/bin/python -m pytest -q "$@"
