"""Files a merge writes beside its results, in OUTDIR/merge-summary/ (mirroring the
merged files' folders, so they never mix with TOPAS outputs). Each is named after the
merged file's full name, so `Dose.csv` and `Dose.binheader` in one folder never share
one: a text summary (`Dose.csv.summary.txt`), a PNG (`Dose.csv.png`), the batch
statistics per bin (`Dose.csv.batch.csv`: the estimate and its standard error from the
spread between runs) and, for a 3-D dose in Gy, DICOM RT Dose files of the dose and of
its relative uncertainty (`Dose.csv.dose.dcm`, `Dose.csv.uncertainty.dcm`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from common.topas.combine import BatchStatistics
from common.topas.consistency import ConsistencyReport
from common.topas.dicom import dicom_missing, is_dose_grid, write_rt_dose
from common.topas.header import ScorerHeader
from common.topas.plots import plot_scorer
from common.topas.scorer import Scorer, indices_for_keys
from common.topas.summary import ScorerView, Target, scorer_view, summary_text
from common.topas.tables import write_rows

SUMMARY_DIR = "merge-summary"


@dataclass(frozen=True)
class Extras:
    """What was written for one scorer; paths relative to the output folder."""

    summary: Path
    text: str
    plot: Path | None
    batch: Path | None
    dicom: tuple[Path, ...] = ()


def extras_folder(relative: Path) -> Path:
    """The folder (relative to the output folder) of a merged file's extras."""
    return Path(SUMMARY_DIR) / relative.parent


def write_extras(out_dir: Path, relative: Path, merged: Scorer,
                 batch: BatchStatistics | None, runs: int, histories: int | None,
                 plots: bool, consistency: ConsistencyReport | None = None,
                 warnings: tuple[str, ...] = (), target: Target | None = None
                 ) -> Extras | None:
    """Write the summary, batch file, plot and DICOM files of one merged scorer; None if
    it has neither Sum nor Mean (nothing to summarise)."""
    view = scorer_view(merged, runs, batch, histories)
    if view is None:
        return None
    batch_path = None
    if batch is not None:
        batch_path = extras_folder(relative) / f"{relative.name}.batch.csv"
        write_batch(out_dir / batch_path, merged.header, batch, relative)
    return write_view_extras(out_dir, relative, view, plots, consistency, warnings,
                             batch_path, target)


def write_view_extras(out_dir: Path, relative: Path, view: ScorerView, plots: bool,
                      consistency: ConsistencyReport | None, warnings: tuple[str, ...],
                      batch_path: Path | None, target: Target | None = None) -> Extras:
    """The summary, plot and DICOM files of a merged scorer's view (its batch file,
    `batch_path`, written already)."""
    folder = extras_folder(relative)
    name = relative.name
    listed: dict[str, Path] = {}
    if batch_path is not None:
        listed["Batch statistics per bin"] = batch_path
    plot = None
    if plots:
        title = f"{view.header.scorer_name}: {relative} ({view.runs} runs" + (
            f", {view.histories} histories)" if view.histories else ")")
        if plot_scorer(view, title, out_dir / folder / f"{name}.png") is None:
            plot = listed["Plot"] = folder / f"{name}.png"
    dicom, dicom_note = _dicom(out_dir, folder, name, view)
    for path in dicom:
        listed[f"DICOM RT Dose ({path.name.split('.')[-2]})"] = path
    summary = folder / f"{name}.summary.txt"
    notes = [*warnings, *(consistency.lines() if consistency else [])]
    notes += [dicom_note] if dicom_note else []
    text = summary_text(view, str(relative), listed, tuple(dict.fromkeys(notes)), target)
    (out_dir / summary).parent.mkdir(parents=True, exist_ok=True)
    (out_dir / summary).write_text(text + "\n", encoding="utf-8")
    return Extras(summary=summary, text=text, plot=plot, batch=batch_path, dicom=dicom)


def _dicom(out_dir: Path, folder: Path, name: str,
           view: ScorerView) -> tuple[tuple[Path, ...], str | None]:
    if not is_dose_grid(view.header):
        return (), None
    missing = dicom_missing()
    if missing:
        return (), missing
    paths = (folder / f"{name}.dose.dcm", folder / f"{name}.uncertainty.dcm")
    note = write_rt_dose(view, out_dir / paths[0], out_dir / paths[1])
    return (paths if note is None else ()), note


def write_batch(path: Path, header: ScorerHeader, batch: BatchStatistics,
                relative: Path) -> None:
    """Per bin: the estimate and its standard error from the spread between runs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        handle.write(batch_header(header, batch.runs, batch.per_history, relative))
        write_rows(handle, indices_for_keys(header, batch.keys),
                   [batch.estimate, batch.standard_error])


def batch_header(header: ScorerHeader, runs: int, per_history: bool, relative: Path) -> str:
    """The '#' lines of a batch file."""
    what = ("mean per history (Sum / histories)" if per_history else
            "Sum per run (runs assumed to have equal histories)")
    unit = f" ( {header.unit} )" if header.unit else ""
    lines = [f"# Batch (run-to-run) statistics of {relative} (scorer {header.scorer_name}) "
             f"over {runs} runs",
             f"# Estimate: {what}",
             "# Batch_Standard_Error: standard error of Estimate from the spread between "
             "runs: sqrt(sum_r w_r (x_r - x)^2 / ((R - 1) sum_r w_r)), w_r = histories "
             "of run r (or 1)",
             *(f"# {line}" for line in header.binning + header.extra_binning),
             f"# {header.quantity}{unit} : Estimate   Batch_Standard_Error"]
    return "".join(line + "\n" for line in lines)
