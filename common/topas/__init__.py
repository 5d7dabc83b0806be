"""TOPAS output files: reading, writing and statistically correct merging of runs.

Modules: header (the '#' header shared by CSV and binary scorers), scorer (CSV scorer
files), combine (per-bin combination of runs), merge (run folders -> results folder),
cli (`python -m common.topas`). This package is uploaded to the reducer node together
with common/__init__.py and common/errors.py, so it imports only the standard library,
numpy and common.errors.
"""
from common.topas.combine import ScorerAccumulator
from common.topas.header import ScorerHeader, parse_header, read_header
from common.topas.merge import (MergedFile, MergeReport, SkippedFile, merge_runs,
                                merge_scorer_files)
from common.topas.scorer import Scorer, read_scorer, write_scorer

__all__ = ["MergeReport", "MergedFile", "Scorer", "ScorerAccumulator", "ScorerHeader",
           "SkippedFile", "merge_runs", "merge_scorer_files", "parse_header", "read_header",
           "read_scorer", "write_scorer"]
