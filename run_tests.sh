#!/usr/bin/env bash
# Set up (a .venv with the pinned test requirements) and run the tests.
#   ./run_tests.sh            everything (what CI runs)
#   ./run_tests.sh --quick    the quick tier: pure, in-process tests (no servers, processes
#                             or containers), under a minute; see "Tests" in README.md
# Other arguments go to pytest (e.g. -k prompts, -x).
set -euo pipefail
cd "$(dirname "$0")"
quick=false
if [ "${1:-}" = "--quick" ]; then
  quick=true
  shift
fi
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
if $quick; then
  exec .venv/bin/python -m pytest -q -m "not slow" "$@"
fi
# Azurite (Microsoft's Azure Storage emulator) for the storage tests, pinned in package-lock.json.
if [ ! -x node_modules/.bin/azurite-blob ]; then
  npm ci --no-audit --no-fund --loglevel=error
fi
# The fake Batch service runs container tasks in a bubblewrap sandbox, and the test images are
# made with busybox: Debian packages, installed here when missing (CI runs as root).
if ! command -v bwrap >/dev/null 2>&1 || [ ! -x /usr/bin/busybox ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq bubblewrap busybox-static >/dev/null 2>&1 ||
      { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq bubblewrap busybox-static >/dev/null; }
  else
    echo "note: install bubblewrap and busybox-static (Debian packages) for the container tests" >&2
  fi
fi
.venv/bin/python -m pytest -q "$@"
