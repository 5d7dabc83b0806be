"""The pictures of merged scorers (common/topas/plots.py, doseplots.py, geometry.py):
the beam found in a dose grid, depth-dose and lateral curves with the numbers of the
grid, masked bins explained, log-binned spectra against energy."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from common.topas.doseplots import find_beam
from common.topas.geometry import axes, extra_axis
from common.topas.header import parse_header
from common.topas.summary import ScorerView

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from common.topas import plots  # noqa: E402

DATA = Path(__file__).parent / "data" / "topas" / "dixinchen__neutron-dosimetry"
SHAPE = (12, 10, 20)


def grid_header(shape: tuple[int, int, int] = SHAPE):  # type: ignore[no-untyped-def]
    return parse_header(["# Results for scorer: Dose", "# Scored in component: Phantom",
                         f"# X in {shape[0]} bins of 0.2 cm", f"# Y in {shape[1]} bins of 0.2 cm",
                         f"# Z in {shape[2]} bins of 0.5 cm",
                         "# DoseToMedium ( Gy ) : Sum   "])


def bragg_grid(along: int, entering_high: bool) -> np.ndarray:
    """A proton-like dose: plateau, peak near the far end, nothing behind it."""
    index = np.indices(SHAPE, dtype=float)
    n = SHAPE[along]
    depth = (n - 1 - index[along]) if entering_high else index[along]
    lateral = [index[a] - (SHAPE[a] - 1) / 2 for a in range(3) if a != along]
    curve = np.where(depth < 0.8 * n, 0.3 + np.exp(-(depth - 0.7 * n) ** 2 / 2), 0.0)
    return curve * np.exp(-(lateral[0] ** 2 + lateral[1] ** 2) / 4)


@pytest.mark.parametrize("along, entering_high", [(2, True), (2, False), (0, False)])
def test_the_beam_is_found(along: int, entering_high: bool) -> None:
    beam = find_beam(bragg_grid(along, entering_high))
    assert (beam.depth, beam.reversed) == (along, entering_high)
    assert beam.lateral == max((a for a in range(3) if a != along), key=lambda a: SHAPE[a])


def test_depth_dose_and_lateral_curves_hold_the_grid_values() -> None:
    estimate = bragg_grid(2, entering_high=True)
    relative = np.full(SHAPE, 0.02)
    view = ScorerView(header=grid_header(), runs=3, histories=300, per_history=True,
                      estimate=estimate, relative_error=relative, relative_batch_error=None)
    figure = plots._draw(plt, view, "t")
    try:
        plane, error_map, depth_dose, lateral = figure.axes[:4]  # then the colour bars
        x, y = depth_dose.lines[0].get_data()
        # Entering at +Z: depth 0.25 cm is the last Z bin, then towards -Z.
        np.testing.assert_allclose(x, (np.arange(20) + 0.5) * 0.5)
        beam = find_beam(estimate)
        np.testing.assert_allclose(y, estimate[beam.centre[0], beam.centre[1], ::-1])
        assert len(depth_dose.collections) == 1  # the +-1 standard error band
        peak = np.unravel_index(np.argmax(estimate), SHAPE)
        x, y = lateral.lines[0].get_data()
        np.testing.assert_allclose(x, (np.arange(12) + 0.5 - 6) * 0.2)  # X, the longer
        np.testing.assert_allclose(y, estimate[:, peak[1], peak[2]])
        assert "beam from the left" in plane.get_title()
        image = plane.images[0].get_array()
        assert image.shape == (12, 20)  # rows: lateral X, columns: depth
        np.testing.assert_allclose(image[:, 0], estimate[:, peak[1], -1])  # entrance left
        legend = [text.get_text() for text in error_map.get_legend().get_texts()]
        assert legend == ["grey: below 10% of the maximum (error not shown)"]
        masked = error_map.images[0].get_array().mask
        assert masked[:, -1].all()  # behind the peak: no dose, no error shown
    finally:
        plt.close("all")


def test_log_binned_spectrum_is_drawn_against_energy() -> None:
    from common.topas import read_scorer
    scorer = read_scorer(DATA / "Feb__Feb-19__FluenceSpectra_LogBin.binheader")
    binning = extra_axis(scorer.header)
    assert binning is not None and binning.logarithmic
    np.testing.assert_allclose(binning.edges[[0, -1]], [0.01, 110.1], rtol=1e-4)
    estimate = scorer.values["Sum"].reshape(1, 1, 1, -1)
    view = ScorerView(header=scorer.header, runs=1, histories=None, per_history=False,
                      estimate=estimate, relative_error=None, relative_batch_error=None)
    figure = plots._draw(plt, view, "t")
    try:
        top = figure.axes[0]
        assert top.get_xscale() == "log"
        assert "energy (MeV), logarithmic bins" in figure.axes[1].get_xlabel()
        steps = top.patches[0]
        np.testing.assert_allclose(steps.get_data().edges, binning.edges)
        np.testing.assert_array_equal(steps.get_data().values, scorer.values["Sum"][0, 1:101])
    finally:
        plt.close("all")
    linear = extra_axis(read_scorer(
        DATA / "Feb__Feb-19__FluenceSpectra_FixedBin.binheader").header)
    assert linear is not None and not linear.logarithmic
    np.testing.assert_allclose(np.diff(linear.edges), 1.1009, rtol=1e-9)


def test_bin_centres_of_box_and_cylinder_axes() -> None:
    x, y, z = axes(grid_header())
    np.testing.assert_allclose(x.centres()[[0, -1]], [-1.1, 1.1])
    assert (z.label, z.centred) == ("Z (cm)", True)
    lines = [line.replace("# X in", "# R in") for line in grid_header().lines]
    r = axes(parse_header(lines))[0]
    np.testing.assert_allclose(r.centres()[:2], [0.1, 0.3])  # radii start at 0


def test_a_band_too_thin_to_see_says_so_and_no_offset_text_sits_over_a_title() -> None:
    """A 0.4 % band is thinner than the line: the legend gives its width. A dose of 1e-12 Gy
    per history gets its power of ten in the colour bar's label, not as offset text above
    the bar (where it overlapped the panel's title)."""
    estimate = bragg_grid(2, entering_high=True) * 3e-12
    view = ScorerView(header=grid_header(), runs=3, histories=300, per_history=True,
                      estimate=estimate, relative_error=np.full(SHAPE, 0.004),
                      relative_batch_error=None)
    figure = plots._draw(plt, view, "t")
    try:
        figure.canvas.draw()
        plane, error_map, depth_dose, lateral, *bars = figure.axes
        for panel in (depth_dose, lateral):
            legend = [text.get_text() for text in panel.get_legend().get_texts()]
            assert legend[1] == "±1 standard error (up to 0.4 %: thinner than the line)"
            assert panel.yaxis.get_offset_text().get_text() == ""
            assert panel.get_ylabel().endswith("(× 1e-12)")
        assert [bar.yaxis.get_offset_text().get_text() for bar in bars] == ["", ""]
        assert bars[0].get_ylabel().endswith("(× 1e-12)")
        assert bars[0].get_yticks().max() < 10  # the values shown are of order one
    finally:
        plt.close("all")
    wide = ScorerView(header=grid_header(), runs=3, histories=300, per_history=True,
                      estimate=bragg_grid(2, True), relative_error=np.full(SHAPE, 0.05),
                      relative_batch_error=None)
    figure = plots._draw(plt, wide, "t")
    try:
        legend = [t.get_text() for t in figure.axes[2].get_legend().get_texts()]
        assert legend[1] == "±1 standard error (up to 5 %)"
    finally:
        plt.close("all")


def test_the_convergence_plot_writes_its_uncertainties_as_numbers() -> None:
    """A log axis between 0.3 % and 2 % labelled 4×10⁻¹ reads badly: plain numbers."""
    from common.workflow.convergence import plain_log_ticks
    figure, axis = plt.subplots()
    try:
        axis.loglog([1e5, 1e6, 4e6], [1.9, 0.62, 0.31], "o")
        plain_log_ticks(axis.yaxis)
        figure.canvas.draw()
        labels = [t.get_text() for t in axis.yaxis.get_ticklabels(which="both") if t.get_text()]
        assert labels and not any("10" in label and "^" in label or "×" in label
                                  or "\\times" in label for label in labels)
        assert "0.5" in labels and "1" in labels
    finally:
        plt.close("all")
