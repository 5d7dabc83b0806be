"""Files a merge writes beside its results, in OUTDIR/merge-summary/ (mirroring the
merged files' folders, so they never mix with TOPAS outputs): per scorer a text summary
(`<stem>_summary.txt`), a PNG (`<stem>.png`) and the batch statistics per bin
(`<stem>_batch.csv`: the estimate and its standard error from the spread between runs).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from common.topas.combine import BatchStatistics
from common.topas.header import ScorerHeader
from common.topas.plots import plot_scorer
from common.topas.scorer import Scorer, indices_for_keys, write_rows
from common.topas.summary import scorer_view, summary_text

SUMMARY_DIR = "merge-summary"


@dataclass(frozen=True)
class Extras:
    """What was written for one scorer; paths relative to the output folder."""

    summary: Path
    text: str
    plot: Path | None
    batch: Path | None


def write_extras(out_dir: Path, relative: Path, merged: Scorer,
                 batch: BatchStatistics | None, runs: int, histories: int | None,
                 plots: bool) -> Extras | None:
    """Write the summary, batch file and plot of one merged scorer; None if it has
    neither Sum nor Mean (nothing to summarise)."""
    view = scorer_view(merged, runs, batch, histories)
    if view is None:
        return None
    folder = Path(SUMMARY_DIR) / relative.parent
    stem = relative.stem
    listed: dict[str, Path] = {}
    batch_path = None
    if batch is not None:
        batch_path = folder / f"{stem}_batch.csv"
        write_batch(out_dir / batch_path, merged.header, batch, relative)
        listed["Batch statistics per bin"] = batch_path
    plot = None
    if plots:
        title = f"{merged.header.scorer_name}: {relative} ({runs} runs" + (
            f", {histories} histories)" if histories else ")")
        if plot_scorer(view, title, out_dir / folder / f"{stem}.png") is None:
            plot = listed["Plot"] = folder / f"{stem}.png"
    summary = folder / f"{stem}_summary.txt"
    text = summary_text(view, str(relative), listed)
    (out_dir / summary).parent.mkdir(parents=True, exist_ok=True)
    (out_dir / summary).write_text(text + "\n", encoding="utf-8")
    return Extras(summary=summary, text=text, plot=plot, batch=batch_path)


def write_batch(path: Path, header: ScorerHeader, batch: BatchStatistics,
                 relative: Path) -> None:
    """Per bin: the estimate and its standard error from the spread between runs."""
    what = ("mean per history (Sum / histories)" if batch.per_history else
            "Sum per run (runs assumed to have equal histories)")
    unit = f" ( {header.unit} )" if header.unit else ""
    lines = [f"# Batch (run-to-run) statistics of {relative} (scorer {header.scorer_name}) "
             f"over {batch.runs} runs",
             f"# Estimate: {what}",
             "# Batch_Standard_Error: standard error of Estimate from the spread between "
             "runs: sqrt(sum_r w_r (x_r - x)^2 / ((R - 1) sum_r w_r)), w_r = histories "
             "of run r (or 1)",
             *(f"# {line}" for line in header.binning + header.extra_binning),
             f"# {header.quantity}{unit} : Estimate   Batch_Standard_Error"]
    indices = indices_for_keys(header, batch.keys)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        handle.write("".join(line + "\n" for line in lines))
        write_rows(handle, indices, [batch.estimate, batch.standard_error])
