"""Entry point: `python -m common.topas merge --out OUTDIR RUNDIR [RUNDIR ...]`."""
import sys

from common.topas.cli import main

sys.exit(main())
