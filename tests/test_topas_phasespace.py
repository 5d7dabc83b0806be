"""Phase spaces (.header + .phsp, common/topas/phasespace.py): the real headers of every
format, exact header round trips, and merges whose counts match their data."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from common.errors import ToolError
from common.topas import merge_phase_spaces, read_phase_space_header
from common.topas.cli import main
from common.topas.merge import merge_runs
from common.topas.phasespace import NotAPhaseSpace, PhaseSpace, check_data

DATA = Path(__file__).parent / "data" / "topas"
OPEN = DATA / "OpenTOPAS__OpenTOPAS"
CHALL = DATA / "davidchall__topas2numpy"
HEADERS = sorted(DATA.rglob("*.header"))
WITH_DATA = [h for h in HEADERS if h.with_suffix(".phsp").exists()]


def iso(kind: str) -> Path:
    return OPEN / f"tests__phasespaces__iso_{kind}.header"


@pytest.mark.parametrize("path", HEADERS, ids=lambda p: p.name)
def test_header_round_trip_is_exact(path: Path) -> None:
    assert read_phase_space_header(path).text() == path.read_text()


@pytest.mark.parametrize("path", WITH_DATA, ids=lambda p: p.name)
def test_fixture_counts_match_their_data(path: Path) -> None:
    check_data(PhaseSpace(path, path.with_suffix(".phsp"), read_phase_space_header(path)))


def test_what_the_headers_say() -> None:
    ascii_ = read_phase_space_header(iso("ascii"))
    assert (ascii_.format, ascii_.original_histories, ascii_.reached, ascii_.particles) == (
        "ascii", 100, 99, 106)
    assert ascii_.per_particle == {"e-": 7, "proton": 99}
    assert ascii_.minimum_energy["e-"].text == "0.010434 MeV"
    assert ascii_.maximum_energy["proton"].value == 148.56
    binary = read_phase_space_header(iso("binary_add"))
    assert binary.bytes_per_particle == 106 and len(binary.columns) == 29
    limited = read_phase_space_header(iso("limited"))
    assert (limited.format, limited.bytes_per_particle, limited.particles) == ("limited", 29, 106)
    old = read_phase_space_header(CHALL / "tests__data__binary-phasespace.header")
    assert old.columns[1] == " 0- 3: Position X (cm)" and old.bytes_per_particle == 34
    ntuple = read_phase_space_header(CHALL / "tests__data__binary-other-ntuple.header")
    assert (ntuple.title, ntuple.particles_label, ntuple.particles) == (
        None, "Scored Entries", 1587)


def runs_of(tmp_path: Path, headers: list[Path], name: str = "phsp") -> list[Path]:
    runs = []
    for r, header in enumerate(headers):
        run = tmp_path / f"run{r}"
        run.mkdir()
        shutil.copy(header, run / f"{name}.header")
        shutil.copy(header.with_suffix(".phsp"), run / f"{name}.phsp")
        runs.append(run)
    return runs


@pytest.mark.parametrize("kind", ["ascii", "binary", "limited", "ascii_add", "binary_add"])
def test_three_runs_merge_with_exact_counts(tmp_path: Path, kind: str) -> None:
    runs = runs_of(tmp_path, [iso(kind)] * 3)
    report = merge_runs(runs, tmp_path / "out", plots=False)
    assert [(m.path, m.rows, m.histories) for m in report.merged] == [
        (Path("phsp.header"), 318, 300)]
    merged = read_phase_space_header(tmp_path / "out" / "phsp.header")
    one = read_phase_space_header(iso(kind))
    assert merged.particles == 3 * one.particles
    assert merged.original_histories == 300
    if merged.format != "limited":
        assert merged.reached == 297
        assert merged.per_particle == {"e-": 21, "proton": 297}
        assert merged.minimum_energy == one.minimum_energy
    data = (tmp_path / "out" / "phsp.phsp").read_bytes()
    assert data == iso(kind).with_suffix(".phsp").read_bytes() * 3
    check_data(PhaseSpace(tmp_path / "out" / "phsp.header", tmp_path / "out" / "phsp.phsp",
                          merged))


def test_old_style_headers_merge(tmp_path: Path) -> None:
    for kind in ("ascii", "binary"):
        header = CHALL / f"tests__data__{kind}-phasespace.header"
        out = tmp_path / kind
        merged = merge_phase_spaces([header, header], out / "p.header")
        assert merged.particles == 208 and merged.per_particle == {"e-": 8, "proton": 200}
        assert merged.columns == read_phase_space_header(header).columns


def write_ascii_space(path: Path, particles: dict[str, list[float]], histories: int) -> None:
    """A small ASCII phase space: one line per particle, energy in column 6."""
    lines = []
    for name, energies in particles.items():
        code = {"e-": 11, "proton": 2212, "gamma": 22}[name]
        lines += [f"0 0 0 0 0 {e} 1 {code} 0 1" for e in energies]
    path.with_suffix(".phsp").write_text("\n".join(lines) + "\n")
    columns = [" 1: Position X [cm]", " 2: Position Y [cm]", " 3: Position Z [cm]",
               " 4: Direction Cosine X", " 5: Direction Cosine Y", " 6: Energy [MeV]",
               " 7: Weight", " 8: Particle Type (in PDG Format)",
               " 9: Flag to tell if Third Direction Cosine is Negative (1 means true)",
               "10: Flag to tell if this is the First Scored Particle from this History "
               "(1 means true)"]
    total = sum(len(v) for v in particles.values())
    text = ["TOPAS ASCII Phase Space", "", f"Number of Original Histories: {histories}",
            f"Number of Original Histories that Reached Phase Space: {total}",
            f"Number of Scored Particles: {total}", "", "Columns of data are as follows:",
            *columns, "", *(f"Number of {n}: {len(v)}" for n, v in particles.items()), "",
            *(f"Minimum Kinetic Energy of {n}: {min(v):g} MeV" for n, v in particles.items()),
            "", *(f"Maximum Kinetic Energy of {n}: {max(v):g} MeV" for n, v in particles.items())]
    path.with_suffix(".header").write_text("\n".join(text) + "\n")


def test_particle_types_of_some_runs_only(tmp_path: Path) -> None:
    a, b, c = (tmp_path / f"{n}.header" for n in "abc")
    write_ascii_space(a, {"e-": [0.5, 0.2], "proton": [100.0]}, 10)
    write_ascii_space(b, {"gamma": [0.05, 1.25]}, 20)
    write_ascii_space(c, {"e-": [0.1, 0.9], "gamma": [2.5]}, 30)
    merged = merge_phase_spaces([a, b, c], tmp_path / "out" / "m.header")
    assert merged.original_histories == 60 and merged.particles == 8 and merged.reached == 8
    assert merged.per_particle == {"e-": 4, "proton": 1, "gamma": 3}
    assert {n: e.value for n, e in merged.minimum_energy.items()} == {
        "e-": 0.1, "proton": 100.0, "gamma": 0.05}
    assert {n: e.value for n, e in merged.maximum_energy.items()} == {
        "e-": 0.9, "proton": 100.0, "gamma": 2.5}
    again = read_phase_space_header(tmp_path / "out" / "m.header")
    assert again == merged
    assert (tmp_path / "out" / "m.phsp").read_text().count("\n") == 8


def test_generated_binary_records_concatenate_byte_exact(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    headers = []
    for r, n in enumerate((5, 0, 12)):
        records = rng.integers(0, 256, (n, 34), dtype=np.uint8)
        path = tmp_path / f"r{r}.header"
        text = iso("binary").read_text().replace("Number of Scored Particles: 106",
                                                 f"Number of Scored Particles: {n}")
        path.write_text(text)
        path.with_suffix(".phsp").write_bytes(records.tobytes())
        headers.append(path)
    merged = merge_phase_spaces(headers, tmp_path / "out" / "m.phsp")
    assert merged.particles == 17
    assert (tmp_path / "out" / "m.phsp").read_bytes() == b"".join(
        h.with_suffix(".phsp").read_bytes() for h in headers)


def test_ascii_cut_inside_its_last_line_is_refused(tmp_path: Path) -> None:
    # The cut line used to count as a particle, making a merged file no reader accepts.
    runs = runs_of(tmp_path, [iso("ascii")] * 3)
    data = runs[1] / "phsp.phsp"
    text = data.read_bytes()
    data.write_bytes(text[:-30])  # inside the 106th particle's line: still 106 lines
    assert data.read_bytes().count(b"\n") == 105
    with pytest.raises(ToolError, match=f"{data}: the last line is cut"):
        merge_runs(runs, tmp_path / "out", plots=False)
    data.write_bytes(text[:-30] + b"\n")  # a short last line with its newline
    with pytest.raises(ToolError, match=f"{data}: the last line holds 6 values, the "
                                        "header describes 10 columns"):
        merge_runs(runs, tmp_path / "out", plots=False)
    assert not (tmp_path / "out" / "phsp.phsp").exists()
    data.write_bytes(text)
    merge_runs(runs, tmp_path / "out", plots=False)
    topas2numpy = pytest.importorskip("topas2numpy")
    merged = topas2numpy.read_ntuple(str(tmp_path / "out" / "phsp.phsp"))
    assert len(merged) == 3 * 106


def test_different_columns_name_both_files(tmp_path: Path) -> None:
    runs = runs_of(tmp_path, [iso("ascii"), iso("ascii_add")])
    with pytest.raises(ToolError, match=r"cannot merge .*run1/phsp.header with .*run0/"
                                        r"phsp.header: different columns"):
        merge_runs(runs, tmp_path / "out", plots=False)
    (tmp_path / "x").mkdir()
    runs = runs_of(tmp_path / "x", [iso("binary"), iso("ascii")])
    with pytest.raises(ToolError, match="different format: binary vs ascii"):
        merge_runs(runs, tmp_path / "out2", plots=False)


def test_counts_disagreeing_with_data_are_refused(tmp_path: Path) -> None:
    runs = runs_of(tmp_path, [iso("binary")] * 2)
    data = runs[1] / "phsp.phsp"
    data.write_bytes(data.read_bytes()[:-34])
    with pytest.raises(ToolError, match=r"run1/phsp.phsp: holds 105 records of 34 bytes but "
                                        r".*counts 106 particles"):
        merge_runs(runs, tmp_path / "out", plots=False)
    assert not (tmp_path / "out" / "phsp.phsp").exists()


def test_ascii_line_count_checked(tmp_path: Path) -> None:
    runs = runs_of(tmp_path, [iso("ascii")] * 2)
    data = runs[0] / "phsp.phsp"
    data.write_text(data.read_text() + "1 2 3 4 5 6 7 8 9 10\n")
    with pytest.raises(ToolError, match=r"run0/phsp.phsp: holds 107 lines"):
        merge_runs(runs, tmp_path / "out", plots=False)


def test_phase_space_missing_in_a_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = runs_of(tmp_path, [iso("limited")] * 3)
    (runs[2] / "phsp.header").unlink()
    assert main(["merge", "--out", str(tmp_path / "out")] + [str(r) for r in runs]) == 1
    assert f"phsp.header: missing in {runs[2]}" in capsys.readouterr().err


def test_other_header_files_are_skipped(tmp_path: Path) -> None:
    runs = runs_of(tmp_path, [iso("ascii")] * 2)
    for run in runs:
        (run / "notes.header").write_text("Some other tool's header\nwith: things\n")
    report = merge_runs(runs, tmp_path / "out", plots=False)
    assert [m.path for m in report.merged] == [Path("phsp.header")]
    assert [s.path for s in report.skipped] == [Path("notes.header")]
    assert "unrecognised line" in report.skipped[0].reason
    with pytest.raises(NotAPhaseSpace):
        read_phase_space_header(runs[0] / "notes.header")


def test_cli_reports_phase_spaces(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = runs_of(tmp_path, [iso("binary")] * 2)
    assert main(["merge", "--out", str(tmp_path / "out")] + [str(r) for r in runs]) == 0
    assert "phsp.header: binary phase space, 2 runs, 200 histories, 212 particles" in (
        capsys.readouterr().out)
