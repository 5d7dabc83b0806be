"""The fast CSV number parser (common/topas/fastcsv.py): bit-exact against float().

Every value must be the double float() gives for its text, whatever the shape TOPAS (or
C++ streams in general) prints, and rows in any other shape must go to the general
parser, not be misread.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from common.errors import ToolError
from common.topas import fastcsv
from common.topas.scorer import read_scorer

pytestmark = pytest.mark.skipif(not fastcsv.available(),
                                reason="no 80-bit long double on this machine")

# Decimal texts on or within a hair of the midpoint between two doubles, and extremes.
# The first four round wrongly if rounded twice (to long double, then to double): the
# parser must notice and hand them to float().
TIES = ["2858377281552372e-43", "9082239513376287e-50", "4911787875665790e-30",
        "1991664079356706e-54", "9007199254740993", "9007199254740995", "2.2250738585072011e-308",
        "2.2250738585072012e-308", "1e23", "8.589973e9", "4.35e-320", "4.9e-324",
        "1.7976931348623157e+308", "179769313486231580793728971405301e+276",
        "0.500000000000000166533453693773481063544750213623046875",
        "7.0064923216240862e-46", "3.4028236692093846e+38", "123456789012345678",
        "9.999999999999999e-05", "0.0001234567890123456", "5e-324", "-0", "1e-400"]


def random_tokens(rng: np.random.Generator, n: int) -> list[str]:
    """Numbers as TOPAS and C++ print them, and then some."""
    makers = [
        lambda: "%d" % rng.integers(-5, 10 ** int(rng.integers(1, 16))),
        lambda: "%.16g" % (rng.random() * 10.0 ** rng.integers(-320, 300)),
        lambda: "%.16g" % -rng.lognormal(0, 8),
        lambda: repr(float(rng.random() * 10.0 ** rng.integers(-30, 30))),
        lambda: "%.17g" % (rng.random() * 10.0 ** rng.integers(-30, 30)),
        lambda: str(rng.choice(TIES + ["9e+99", "-9e+99", "-1", "0", "1E+05"])),
        lambda: "%.16g" % (rng.integers(1, 10 ** 16) * 10.0 ** rng.integers(-40, 0)),
        lambda: "%.*g" % (int(rng.integers(1, 17)), rng.random() * 10.0 ** rng.integers(-8, 17)),
    ]
    return [makers[int(k)]() for k in rng.integers(0, len(makers), n)]


def write_rows(path: Path, tokens: list[str], columns: int, newline: str = "\n",
               last_newline: bool = True) -> None:
    rows = [", ".join(tokens[i:i + columns]) for i in range(0, len(tokens), columns)]
    path.write_text("# a header line\n" + newline.join(rows) + (newline if last_newline else ""),
                    newline="")


def assert_bit_exact(got: np.ndarray, tokens: list[str]) -> None:
    want = np.array([float(t) for t in tokens]).reshape(got.shape)
    same = got.view(np.uint64) == want.view(np.uint64)
    bad = np.argwhere(~same)
    assert same.all(), [(tokens[r * got.shape[1] + c], got[r, c]) for r, c in bad[:5]]


@pytest.mark.parametrize("seed", range(4))
def test_random_numbers_bit_exact(tmp_path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    columns = 7
    tokens = random_tokens(rng, columns * 4000)
    path = tmp_path / "r.csv"
    write_rows(path, tokens, columns, last_newline=bool(seed % 2))
    got = fastcsv.read_columns(path, len("# a header line\n"), columns, range(columns))
    assert got is not None
    assert_bit_exact(got, tokens)


def test_midpoints_go_to_float(tmp_path: Path) -> None:
    path = tmp_path / "ties.csv"
    write_rows(path, TIES, 1)
    got = fastcsv.read_columns(path, len("# a header line\n"), 1, [0])
    assert got is not None
    assert_bit_exact(got, TIES)
    assert np.signbit(got[TIES.index("-0"), 0])


def test_some_columns_and_windows_line_ends(tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    tokens = random_tokens(rng, 5 * 300)
    path = tmp_path / "crlf.csv"
    write_rows(path, tokens, 5, newline="\r\n")
    got = fastcsv.read_columns(path, len("# a header line\n"), 5, [0, 3, 4])
    assert got is not None
    want = [t for i, t in enumerate(tokens) if i % 5 in (0, 3, 4)]
    assert_bit_exact(got, want)


@pytest.mark.parametrize("block", [97, 16])
def test_blocks_split_lines_anywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     block: int) -> None:
    # Small blocks: rows are cut at block ends and put back together; with 16 bytes
    # every row is longer than a block.
    monkeypatch.setattr(fastcsv, "_BLOCK_BYTES", block)
    rng = np.random.default_rng(3)
    tokens = random_tokens(rng, 3 * 200)
    path = tmp_path / "b.csv"
    write_rows(path, tokens, 3, last_newline=block == 16)
    got = fastcsv.read_columns(path, len("# a header line\n"), 3, range(3))
    assert got is not None
    assert_bit_exact(got, tokens)


def test_constant_columns(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text("# h\n" + "".join(f"{i}, 1.5, 81186\n" for i in range(50)))
    got = fastcsv.read_columns(path, 4, 3, [0, 1, 2], constant=[2])
    assert got is not None and np.all(got[:, 2] == 81186) and np.all(got[:, 1] == 1.5)
    path.write_text("# h\n" + "".join(f"{i}, 1.5, {81186 + (i == 7)}\n" for i in range(50)))
    got = fastcsv.read_columns(path, 4, 3, [0, 1, 2], constant=[2])
    assert got is not None and got[7, 2] == 81187 and got[6, 2] == 81186


@pytest.mark.parametrize("body", [
    "1, 2, 3\n4, 5\n",           # a short row
    "1, 2, 3\n4, 5, 6, 7\n",     # a long row
    "1, 2, 3\n\n4, 5, 6\n",      # an empty line
    "1 2 3\n",                   # no commas
])
def test_other_shapes_are_refused(tmp_path: Path, body: str) -> None:
    path = tmp_path / "odd.csv"
    path.write_text("# h\n" + body)
    assert fastcsv.read_columns(path, 4, 3, [0, 1, 2]) is None


def test_unreadable_number_names_its_row(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("# h\n1, 2\n3, 4.5.6\n")
    with pytest.raises(fastcsv.UnreadableNumber, match=r"'4.5.6' in data row 2"):
        fastcsv.read_columns(path, 4, 2, [0, 1])


def test_odd_but_valid_numbers_still_read(tmp_path: Path) -> None:
    tokens = ["nan", "inf", "-inf", " 2.5", "+3", "1.5e3", "1e5", ".5", "5."]
    path = tmp_path / "odd.csv"
    write_rows(path, tokens, 1)
    got = fastcsv.read_columns(path, len("# a header line\n"), 1, [0])
    assert got is not None
    want = np.array([float(t) for t in tokens])
    assert np.array_equal(got[:, 0], want, equal_nan=True)


def test_scorer_falls_back_when_not_available(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "s.csv"
    path.write_text("# Results for scorer: S\n# Scored in component: Box\n"
                    "# Energy ( MeV ) : Sum   Mean   \n1.25, 0.000125\n")
    fast = read_scorer(path)
    monkeypatch.setattr(fastcsv, "available", lambda: False)
    slow = read_scorer(path)
    assert fast.values["Sum"].tolist() == slow.values["Sum"].tolist() == [1.25]
    assert fast.values["Mean"].tolist() == slow.values["Mean"].tolist() == [0.000125]


def test_scorer_reads_only_the_statistics_asked_for(tmp_path: Path) -> None:
    path = tmp_path / "s.csv"
    path.write_text("# Results for scorer: S\n# Scored in component: Box\n"
                    "# Energy ( MeV ) : Sum   Mean   \n1.25, 0.000125\n")
    scorer = read_scorer(path, statistics=("Mean",))
    assert list(scorer.values) == ["Mean"] and scorer.header.statistics == ("Sum", "Mean")
    with pytest.raises(ToolError, match="does not report Max"):
        read_scorer(path, statistics=("Max",))
