"""TOPAS output files: reading, writing and statistically correct merging of runs.

Reading, for your own reducer scripts (the merge, the plots and the summary use the same
readers)::

    from common.topas import read_scorer, read_phase_space_header

    dose = read_scorer("run1/Dose.csv")          # a CSV, or "run1/Dose.binheader"
    dose.header.scorer_name, dose.header.unit      # 'Dose', 'Gy'
    dose.header.shape                              # (40, 1, 40) voxels, None if undivided
    dose.values["Sum"]                             # one value per row (bin)
    dose.indices                                   # the (i, j, k) of every row
    dose.histories()                               # Histories_with_Scorer_Active, or None
    grid = dose.grid("Sum")                        # (ni, nj, nk[, energy bins]) array

    ps = read_phase_space_header("run1/phsp.header")
    ps.original_histories, ps.particles, ps.per_particle   # 100, 106, {'e-': 7, ...}

read_scorer(path, statistics=("Sum",)) reads only some statistics (faster). Energy- or
time-binned scorers give (rows, bins) arrays: underflow first, then the bins, then
overflow (and "no incident track"). Sparse CSVs have rows only for the bins printed.

Merging: `python -m common.topas merge --out OUTDIR RUNDIR...` or merge_runs(); see
merge.py. A running merge, one run at a time (earlier runs are never read again)::

    from common.topas import ScorerAccumulator, read_scorer

    accumulator = ScorerAccumulator()
    for path in finished_runs:                     # as they arrive
        accumulator.add(read_scorer(path), path)   # histories=N if the file lacks them
        error = accumulator.relative_standard_error()   # per bin, bin-number order
    merged = accumulator.result()                  # a Scorer; write_scorer() writes it

Modules: header (the '#' header of scorers), tables (the numbers of CSV rows: polars, or
numpy alone), scorer (CSV scorers, the Scorer object), binary (.bin/.binheader scorers),
runs (what one run adds, and the checks that refuse a bad run), combine (the statistics
of merged runs), ledger (what the test keeps of each run, and its file beside a merged
output), consistency (each run tested against all runs pooled), record (what a merged
file stands for), phasespace (.header/.phsp), geometry (bin positions), summary, plots
and dicom (what a merge writes beside its results), extras, folders (which outputs the
run folders share), streams (whole runs read and folded in order), blockread, blocks and
blockwrite (a dense scorer merged block by block over its voxels, in bounded memory),
merge (run folders -> results folder), cli. The package is uploaded to the reducer node with
common/__init__.py and common/errors.py only, so it needs only the standard library and
numpy; polars (faster), matplotlib (plots) and pydicom (RT Dose) are used when present.
"""
from common.topas.binary import read_binary_scorer, write_binary_scorer
from common.topas.combine import BatchStatistics, ScorerAccumulator
from common.topas.consistency import ConsistencyReport, RunCheck
from common.topas.header import (COUNT_IN_BIN, HISTORIES, MAX, MEAN, MIN, SECOND_MOMENT,
                                 STANDARD_DEVIATION, STATISTICS, SUM, VARIANCE,
                                 NotAScorerFile, ScorerHeader, parse_header, read_header)
from common.topas.merge import (MergedFile, MergeReport, SkippedFile, merge_runs,
                                merge_scorer_files)
from common.topas.phasespace import (NotAPhaseSpace, PhaseSpaceHeader, merge_phase_spaces,
                                     read_phase_space_header)
from common.topas.record import MergeRecord, read_record
from common.topas.scorer import Scorer, read_scorer, write_scorer

__all__ = ["BatchStatistics", "COUNT_IN_BIN", "ConsistencyReport", "MergeRecord", "RunCheck",
           "read_record", "HISTORIES", "MAX", "MEAN", "MIN",
           "MergeReport", "MergedFile", "NotAPhaseSpace", "NotAScorerFile",
           "PhaseSpaceHeader", "SECOND_MOMENT", "STANDARD_DEVIATION", "STATISTICS", "SUM",
           "Scorer", "ScorerAccumulator", "ScorerHeader", "SkippedFile", "VARIANCE",
           "merge_phase_spaces", "merge_runs", "merge_scorer_files", "parse_header",
           "read_binary_scorer", "read_header", "read_phase_space_header", "read_scorer",
           "write_binary_scorer", "write_scorer"]
