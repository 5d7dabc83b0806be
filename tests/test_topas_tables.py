"""The numeric rows of scorer CSVs (common/topas/tables.py), with polars and with numpy
alone: every value read is the double float() gives for its text, every value written
reads back to the same double, and rows that are not numbers are named."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from common.errors import ToolError
from common.topas import tables

ENGINES = [tables.NUMPY] + ([tables.POLARS] if tables._polars is not None else [])
HEADER = "# a header line\n"

# Decimal texts on or within a hair of the midpoint between two doubles, and extremes:
# a parser that rounds twice gets the first four wrong.
TIES = ["2858377281552372e-43", "9082239513376287e-50", "4911787875665790e-30",
        "1991664079356706e-54", "9007199254740993", "9007199254740995",
        "2.2250738585072011e-308", "2.2250738585072012e-308", "1e23", "8.589973e9",
        "4.35e-320", "4.9e-324", "1.7976931348623157e+308",
        "0.500000000000000166533453693773481063544750213623046875",
        "7.0064923216240862e-46", "3.4028236692093846e+38", "123456789012345678",
        "9.999999999999999e-05", "0.0001234567890123456", "5e-324", "-0", "1e-400",
        "9e+99", "-9e+99", "-1", "0", "1E+05"]


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(tables.ENGINE_VARIABLE, request.param)
    assert tables.engine() == request.param
    return request.param


def read_table(path: Path, offset: int, n_columns: int, header_lines: int) -> np.ndarray:
    columns = tables.read_columns(path, offset, n_columns, header_lines)
    return np.column_stack(columns) if columns else np.empty((0, n_columns))


def random_tokens(rng: np.random.Generator, n: int) -> list[str]:
    """Numbers as TOPAS and C++ print them, and then some."""
    makers = [
        lambda: "%d" % rng.integers(-5, 10 ** int(rng.integers(1, 16))),
        lambda: "%.16g" % (rng.random() * 10.0 ** rng.integers(-320, 300)),
        lambda: "%.16g" % -rng.lognormal(0, 8),
        lambda: repr(float(rng.random() * 10.0 ** rng.integers(-30, 30))),
        lambda: "%.17g" % (rng.random() * 10.0 ** rng.integers(-30, 30)),
        lambda: str(rng.choice(TIES)),
        lambda: "%.*g" % (int(rng.integers(1, 17)), rng.random() * 10.0 ** rng.integers(-8, 17)),
    ]
    return [makers[int(k)]() for k in rng.integers(0, len(makers), n)]


def write_tokens(path: Path, tokens: list[str], columns: int, newline: str = "\n") -> None:
    rows = [", ".join(tokens[i:i + columns]) for i in range(0, len(tokens), columns)]
    path.write_text(HEADER + newline.join(rows) + newline, newline="")


def assert_bit_exact(got: np.ndarray, tokens: list[str]) -> None:
    want = np.array([float(t) for t in tokens]).reshape(got.shape)
    same = got.view(np.uint64) == want.view(np.uint64)
    bad = np.argwhere(~same)
    assert same.all(), [(tokens[r * got.shape[1] + c], got[r, c]) for r, c in bad[:5]]


@pytest.mark.parametrize("seed", range(3))
def test_reading_is_bit_exact(tmp_path: Path, engine: str, seed: int) -> None:
    tokens = random_tokens(np.random.default_rng(seed), 7 * 3000)
    path = tmp_path / "r.csv"
    write_tokens(path, tokens, 7, newline="\r\n" if seed == 2 else "\n")
    assert_bit_exact(read_table(path, len(HEADER), 7, 1), tokens)


def test_ties_are_rounded_once(tmp_path: Path, engine: str) -> None:
    path = tmp_path / "ties.csv"
    write_tokens(path, TIES, 1)
    got = read_table(path, len(HEADER), 1, 1)
    assert_bit_exact(got, TIES)
    assert np.signbit(got[TIES.index("-0"), 0])


def test_writing_reads_back_to_the_same_doubles(tmp_path: Path, engine: str) -> None:
    # Arbitrary doubles: "%.16g" loses the last bit of many of them, the writer must not.
    rng = np.random.default_rng(4)
    bits = rng.integers(0, 2 ** 63 - 2 ** 52, 20000, dtype=np.int64).astype(np.uint64)
    values = bits.view(np.float64).reshape(-1, 2)
    values[0] = (0.1, -0.0)
    lossy = np.array([float("%.16g" % v) for v in values.ravel()]) != values.ravel()
    assert lossy.mean() > 0.3  # the test data would catch a 16-digit writer
    indices = np.arange(values.shape[0] * 3).reshape(-1, 3)
    path = tmp_path / "w.csv"
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        handle.write(HEADER)
        tables.write_rows(handle, indices, [values[:, 0], values[:, 1]])
    for reader in ENGINES:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv(tables.ENGINE_VARIABLE, reader)
            table = read_table(path, len(HEADER), 5, 1)
        assert np.array_equal(table[:, :3], indices)
        assert np.array_equal(table[:, 3:].view(np.uint64), values.view(np.uint64)), reader
    first = path.read_text().splitlines()[1]
    assert first == "0, 1, 2, 0.1, -0"  # as TOPAS writes it, not -0.0


def test_energy_bins_interleave_statistic_fastest(tmp_path: Path, engine: str) -> None:
    path = tmp_path / "e.csv"
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        tables.write_rows(handle, np.array([[7]]), [np.array([[1.0, 3.0]]),
                                                    np.array([[2.0, 4.0]])])
    assert path.read_text() == "7, 1, 2, 3, 4\n"


def test_whole_numbers_are_written_as_topas_writes_them(tmp_path: Path, engine: str) -> None:
    # TOPAS prints Count_in_Bin 308 and the histories 1000000 as integers; so must a merge.
    path = tmp_path / "i.csv"
    values = [np.array([308.0, 0.0, 2.5, 1e22, 10.05]), np.array([1e6, -3.0, 0.5, 7.0, 1e-7])]
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        tables.write_rows(handle, np.arange(5).reshape(-1, 1), values)
    rows = path.read_text().splitlines()
    assert rows[0] == "0, 308, 1000000" and rows[1] == "1, 0, -3"
    assert rows[2] == "2, 2.5, 0.5" and rows[4].startswith("4, 10.05, 1e-")
    assert float(rows[3].split(", ")[1]) == 1e22
    table = read_table(path, 0, 3, 0)
    assert np.array_equal(table[:, 1:], np.column_stack(values))


@pytest.mark.parametrize("body, message", [
    ("1, 2, 3\n4, 5\n", r"rows have 2 columns, the header implies 3 \(data row 2\)"),
    ("1, 2, 3\n4, 5, 6, 7\n", r"rows have 4 columns, the header implies 3 \(data row 2\)"),
    ("1, 2, 3\n4, 5.5.5, 6\n", r"unreadable number '5.5.5' in data row 2"),
    ("1 2 3\n", r"rows have 1 columns"),
])
def test_bad_rows_are_named(tmp_path: Path, engine: str, body: str, message: str) -> None:
    path = tmp_path / "odd.csv"
    path.write_text(HEADER + body)
    with pytest.raises(ToolError, match=f"{path}: {message}"):
        read_table(path, len(HEADER), 3, 1)


def test_empty_lines_and_no_rows(tmp_path: Path, engine: str) -> None:
    path = tmp_path / "blank.csv"
    path.write_text(HEADER + "1, 2\n\n3, 4\n")
    assert read_table(path, len(HEADER), 2, 1).tolist() == [[1, 2], [3, 4]]
    path.write_text(HEADER)
    assert read_table(path, len(HEADER), 2, 1).shape == (0, 2)


def test_a_cut_last_row_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "cut.csv"
    path.write_text(HEADER + "0, 0, 0, 178.1917\n0, 0, 1, 178.18")
    with pytest.raises(ToolError, match=f"{path}: the file is cut: its last row has no end "
                                        "of line"):
        tables.check_final_newline(path)
    path.write_text(HEADER + "0, 0, 0, 178.1917\n")
    tables.check_final_newline(path)


def test_engine_without_polars(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(tables.ENGINE_VARIABLE, raising=False)
    monkeypatch.setattr(tables, "_polars", None)
    assert tables.engine() == tables.NUMPY


@pytest.mark.skipif(len(ENGINES) < 2, reason="polars is not installed")
def test_a_merge_gives_the_same_doubles_with_either_engine(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from common.topas.merge import merge_runs
    from common.topas.scorer import read_scorer
    from test_topas_merge import ALL_STATS, header_for, make_campaign
    campaign = make_campaign(tmp_path, header_for(ALL_STATS, sparse=True),
                             hit_probability=0.05)
    merged = {}
    for name in ENGINES:
        monkeypatch.setenv(tables.ENGINE_VARIABLE, name)
        report = merge_runs(campaign.runs, tmp_path / name, plots=False)
        assert report.engine == name
        merged[name] = read_scorer(tmp_path / name / "dose" / "Dose.csv")
    numpy_only, with_polars = merged[tables.NUMPY], merged[tables.POLARS]
    assert np.array_equal(numpy_only.indices, with_polars.indices)
    for statistic, values in numpy_only.values.items():
        assert np.array_equal(values.view(np.uint64),
                              with_polars.values[statistic].view(np.uint64)), statistic


def test_only_the_wanted_columns_are_parsed(tmp_path: Path, engine: str) -> None:
    path = tmp_path / "p.csv"
    path.write_text(HEADER + "0, 1.5, 2.5, 7\n1, 3.5, 4.5, 7\n")
    columns = tables.read_columns(path, len(HEADER), 4, 1, wanted=[0, 2])
    assert columns[0].tolist() == [0, 1] and columns[2].tolist() == [2.5, 4.5]
    assert columns[3].tolist() == [7, 7]  # the last is always parsed: it shows short rows
    if engine == tables.POLARS:
        assert columns[1] is None  # skipped, not parsed
    path.write_text(HEADER + "0, 1.5, 2.5, 7\n1, 3.5, 4.5\n")
    with pytest.raises(ToolError, match=r"rows have 3 columns, the header implies 4 "
                                        r"\(data row 2\)"):
        tables.read_columns(path, len(HEADER), 4, 1, wanted=[0, 1])


@pytest.mark.parametrize("text", ["nan", "NaN", "-nan", "inf", "-Inf", "INF", "Infinity",
                                  "+iNf", "NAN"])
def test_every_spelling_of_nan_and_infinity_is_seen_before_columns_are_skipped(
        tmp_path: Path, text: str) -> None:
    assert np.isnan(float(text)) or np.isinf(float(text))  # what a parser would make of it
    path = tmp_path / "n.csv"
    header = "# Mean and Infinity in the header do not count\n"
    path.write_text(header + f"0, 1.5, {text}, 7\n")
    assert tables.may_hold_non_finite(path, len(header))
    path.write_text(header + "0, 1.5, 2.5e-07, 7\n")
    assert not tables.may_hold_non_finite(path, len(header))
    path.write_text(header)
    assert not tables.may_hold_non_finite(path, len(header))


@pytest.mark.parametrize("column, text", [("Mean", "nan"), ("Standard_Deviation", "Infinity"),
                                          ("Variance", "-INF")])
def test_a_merge_that_skips_derived_columns_still_refuses_their_nan(
        tmp_path: Path, engine: str, column: str, text: str) -> None:
    from common.topas.merge import merge_runs
    from test_topas_merge import ALL_STATS, header_for, make_campaign
    campaign = make_campaign(tmp_path, header_for(ALL_STATS))
    path = campaign.runs[1] / "dose" / "Dose.csv"
    lines = path.read_text().splitlines(keepends=True)
    header_lines = sum(line.startswith("#") for line in lines)
    row = lines[header_lines + 5].split(", ")
    row[3 + ALL_STATS.index(column)] = text  # 3 index columns first
    lines[header_lines + 5] = ", ".join(row)
    path.write_text("".join(lines))
    with pytest.raises(ToolError, match=rf"{path}: {column} is -?(nan|inf) in bin"):
        merge_runs(campaign.runs, campaign.out, plots=False)
