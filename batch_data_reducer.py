#!/usr/bin/env python3
"""Merge a campaign's task outputs with one reducer task: see README.md and --help."""
from __future__ import annotations

import sys
from typing import Sequence

from common import cli


def main(argv: Sequence[str] | None = None) -> int:
    return cli.main(cli.REDUCER, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
