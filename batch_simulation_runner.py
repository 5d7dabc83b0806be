#!/usr/bin/env python3
"""Run a simulation campaign on Azure Batch (or locally): see README.md and --help."""
from __future__ import annotations

import sys
from typing import Sequence

from common import cli


def main(argv: Sequence[str] | None = None) -> int:
    return cli.main(cli.RUNNER, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
