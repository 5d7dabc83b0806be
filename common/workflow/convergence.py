"""An adaptive campaign's end: the convergence report and the verdict.

The report — relative uncertainty against histories, as CSV and PNG, with the 1/sqrt(N)
line the estimate used — is written into the results folder and stored beside the runs
(`nodes_output/convergence/`), so the reducer's container holds it too.
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

from common import campaign as cp
from common.transfer import upload_if_changed
from common.workflow.adaptive import AdaptiveSteering, law_points
from common.workflow.context import Run

FOLDER = "convergence"


@dataclass(frozen=True)
class Verdict:
    met: bool
    lines: tuple[str, ...]


def write_report(steering: AdaptiveSteering, folder: Path) -> list[Path]:
    """convergence.csv (+ convergence.png when matplotlib is there) into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    law = law_points(steering)
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["runs", "histories", "relative_standard_error", "law_1_over_sqrt_n"])
    for point, expected in zip(steering.points, law):
        writer.writerow([point.runs, point.histories if point.histories is not None else "",
                         "" if point.relative_error is None else repr(point.relative_error),
                         "" if math.isnan(expected) else repr(expected)])
    paths = [folder / "convergence.csv"]
    paths[0].write_text(table.getvalue())
    picture = _plot(steering, law, folder / "convergence.png")
    return paths + ([picture] if picture else [])


def _plot(steering: AdaptiveSteering, law: list[float], path: Path) -> Path | None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    points = [(p.histories or p.runs, p.relative_error) for p in steering.points
              if p.relative_error is not None]
    if not points:
        return None
    x = [h for h, _ in points]
    figure, axes = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    axes.loglog(x, [100 * e for _, e in points], "o", label="measured (largest in the region)")
    lined = [(h, 100 * e) for (h, _), e in zip(points, law[-len(points):]) if not math.isnan(e)]
    if lined:
        axes.loglog([h for h, _ in lined], [e for _, e in lined], "-", color="0.4",
                    label=r"$1/\sqrt{N}$ through the last point (the estimate)")
    axes.axhline(100 * steering.target.relative_error, color="tab:red", linestyle="--",
                 label=f"target {100 * steering.target.relative_error:g} %")
    axes.set_xlabel("histories" if steering.points[-1].histories else "runs")
    axes.set_ylabel("relative standard error (%)")
    plain_log_ticks(axes.yaxis)
    axes.set_title(f"Convergence of {steering.scorer}")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def plain_log_ticks(axis) -> None:  # noqa: ANN001 (a matplotlib Axis)
    """Tick labels of a log axis as numbers (0.4, 1, 2), not powers of ten (4×10⁻¹): an
    uncertainty in % reads as a number."""
    from matplotlib.ticker import FuncFormatter, LogLocator
    words = FuncFormatter(lambda value, _: f"{value:g}")
    axis.set_major_formatter(words)
    axis.set_minor_locator(LogLocator(base=10, subs=(2.0, 3.0, 5.0)))
    axis.set_minor_formatter(words)


def conclude(run: Run, steering: AdaptiveSteering) -> Verdict:
    """Write and store the report; say whether the target was met and what it took."""
    ctx, store = run.ctx, run.store
    local = ctx.settings.sim.local_results_path / FOLDER
    for path in write_report(steering, local):
        upload_if_changed(store, path, f"{cp.OUTPUT_PREFIX}{FOLDER}/{path.name}")
    target = 100 * steering.target.relative_error
    last = steering.last
    reached = "not measured" if last is None or last.relative_error is None else \
        f"{100 * last.relative_error:.3g} %"
    histories = steering.accumulator.histories
    made = (f"{len(steering.folded)} run(s)" + (f", {histories:,} histories" if histories else "")
            + f", {steering.submitted} task(s) submitted"
            + (f", {len(steering.failed)} failed (not counted)" if steering.failed else ""))
    lines = [f"  uncertainty ({last.method if last else 'batch'} method, bins >= "
             f"{100 * steering.target.region_fraction:g} % of the maximum of {steering.scorer}): "
             f"{reached}; target {target:g} %: " + ("met" if steering.met else "NOT met"),
             f"  {made}",
             f"  convergence report: {local}/convergence.csv"]
    if not steering.met:
        why = (f"MAX_TASK_COUNT ({steering.target.max_tasks}) reached" if steering.capped
               or steering.submitted >= steering.target.max_tasks else "the campaign stopped")
        lines.append(f"  the target was not reached: {why}; raise MAX_TASK_COUNT (or TIMEOUT_MINUTES) "
                     "and add runs with STARTING_NODE past the last one")
    return Verdict(steering.met, tuple(lines))
