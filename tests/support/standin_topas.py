"""A stand-in for OpenTOPAS's `topas` executable, for the stand-in official image.

Real TOPAS (and Geant4) is not run in CI. This program behaves as TOPAS does where the
campaign tool depends on it, and checks what TOPAS would check:

- one parameter file argument; `includeFile` chains (paths relative to the folder it runs
  in); a parameter defined twice in one file is refused, as TOPAS refuses it; a file's own
  value wins over its includes, and the last include over earlier ones;
- Ts/Seed, Ts/NumberOfThreads, So/<source>/NumberOfHistoriesInRun, Tf/NumberOfSequentialTimes;
- the Geant4 data: Ts/G4DataDirectory, else TOPAS_G4_DATA_DIR, sets each G4...DATA variable
  that is not already set (TsMain.cc: setenv without overwrite); then, as Geant4 does at
  initialisation, a missing G4ENSDFSTATEDATA / G4LEDATA / G4LEVELGAMMADATA /
  G4PARTICLEXSDATA / G4NEUTRONHPDATA (TOPAS's default physics) ends the run with a
  G4Exception and exit code 134 (abort);
- Qt: Ts/UseQt without a display fails as Qt does;
- outputs in TOPAS's formats in the working directory: each Sc/<name> scorer with Quantity
  DoseToMedium / EnergyDeposit as CSV or binary (.binheader + .bin) with the statistics of
  its Report (default Sum), statistically sound (per-bin hits drawn from the seed, so runs
  of different seeds agree within their errors); Quantity PhaseSpace as ASCII (.header +
  .phsp, at most 2,000 particles whatever the histories).

It prints what it used on stdout ("stand-in: ..."), for the tests to read.
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

VERSION = "4.3"
DATA_SETS = (("G4LEDATA", "G4EMLOW8.6.1"), ("G4NEUTRONHPDATA", "G4NDL4.7.1"),
             ("G4LEVELGAMMADATA", "PhotonEvaporation6.1"), ("G4RADIOACTIVEDATA", "RadioactiveDecay6.1.2"),
             ("G4PARTICLEXSDATA", "G4PARTICLEXS4.1"), ("G4ENSDFSTATEDATA", "G4ENSDFSTATE3.0"),
             ("G4SAIDXSDATA", "G4SAIDDATA2.0"), ("G4PIIDATA", "G4PII1.3"),
             ("G4REALSURFACEDATA", "RealSurface2.2"), ("G4ABLADATA", "G4ABLA3.3"),
             ("G4INCLDATA", "G4INCL1.2"))
# Read when TOPAS's default physics initialises: (variable, a file it must hold, issued by)
NEEDED = (("G4ENSDFSTATEDATA", "ENSDFSTATE.dat", "G4NuclideTable", "PART70000"),
          ("G4LEDATA", None, "G4LivermorePhotoElectricModel", "em0006"),
          ("G4LEVELGAMMADATA", None, "G4LevelReader", "had0707"),
          ("G4PARTICLEXSDATA", None, "G4ParticleInelasticXS", "had0012"),
          ("G4NEUTRONHPDATA", None, "G4ParticleHPManager", "had0100"))
LINE = re.compile(r"^\s*([A-Za-z]{1,3}):(\S+?)\s*=\s*(.*?)\s*$")
INCLUDE = re.compile(r"^\s*includefile\s*=\s*(.*?)\s*$", re.IGNORECASE)


class Stop(Exception):
    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code


def uncommented(line: str) -> str:
    quoted = False
    for index, char in enumerate(line):
        if char == '"':
            quoted = not quoted
        elif char == "#" and not quoted:
            return line[:index]
    return line


def read(path: Path, depth: int = 0) -> list[dict[str, tuple[str, str, str]]]:
    """Each file's parameters (lower-case name -> (type, value, name)), by falling precedence."""
    if depth > 20 or not path.is_file():
        raise Stop(1, f"TOPAS is unable to open parameter file: {path}")
    own: dict[str, tuple[str, str, str]] = {}
    includes: list[str] = []
    for raw in path.read_text().splitlines():
        line = uncommented(raw)
        include = INCLUDE.match(line)
        if include:
            includes += include.group(1).split()
            continue
        match = LINE.match(line)
        if match:
            kind, name, value = match.groups()
            if name.lower() in own:
                raise Stop(1, f"Topas quitting. The parameter {name} has been defined more than "
                              f"once in the parameter file {path}")
            own[name.lower()] = (kind.lower(), value.strip(), name)
    found = [own]
    for name in reversed(includes):
        found += read(Path(name), depth + 1)
    return found


def raw(files, name: str) -> str | None:
    for parameters in files:
        if name.lower() in parameters:
            return parameters[name.lower()][1]
    return None


def get(files, name: str, default: str | None = None) -> str | None:
    value = raw(files, name)
    return default if value is None else value.strip('"')


def names(files, pattern: str) -> list[str]:
    """Second path parts (as first written) of the parameters matching `pattern` (lower case)."""
    found: dict[str, str] = {}
    for parameters in files:
        for key, (_, _, name) in parameters.items():
            if re.match(pattern, key):
                found.setdefault(key.split("/")[1], name.split("/")[1])
    return sorted(found.values())


def number(text: str | None, default: float) -> float:
    if text is None:
        return default
    value, _, unit = text.partition(" ")
    scale = {"mm": 0.1, "cm": 1.0, "m": 100.0, "um": 1e-4}.get(unit.strip(), 1.0)
    return float(value) * scale


def geant4_data(files) -> str | None:
    folder = get(files, "Ts/G4DataDirectory") or os.environ.get("TOPAS_G4_DATA_DIR")
    if folder:
        for variable, name in DATA_SETS:
            os.environ.setdefault(variable, f"{folder}/{name}")
    for variable, needed, issuer, code in NEEDED:
        where = os.environ.get(variable)
        problem = None
        if not where:
            problem = f"{variable} environment variable must be set"
        elif needed and not Path(where, needed).is_file():
            problem = f"{needed} is not found."
        elif not Path(where).is_dir():
            problem = f"{variable} directory {where} does not exist"
        if problem:
            raise Stop(134, "\n".join([
                "-------- EEEE ------- G4Exception-START -------- EEEE -------",
                f"*** G4Exception : {code}", f"      issued by : {issuer}", problem,
                "*** Fatal Exception *** core dump ***",
                "-------- EEEE -------- G4Exception-END --------- EEEE -------"]))
    return folder


REPORT = {"sum": "Sum", "mean": "Mean", "count_in_bin": "Count_in_Bin",
          "second_moment": "Second_Moment", "variance": "Variance",
          "standard_deviation": "Standard_Deviation", "min": "Min", "max": "Max",
          "histories": "Histories_with_Scorer_Active"}


def statistics(files, scorer: str) -> list[str]:
    """Sc/<name>/Report (any case) as the header's statistic names, in its order."""
    asked = re.findall(r'"([^"]+)"', raw(files, f"Sc/{scorer}/Report") or "") or ["Sum"]
    unknown = [a for a in asked if a.lower() not in REPORT]
    if unknown:
        raise Stop(1, f"Sc/{scorer}/Report: unknown option {unknown[0]!r}")
    return [REPORT[a.lower()] for a in asked]


def dose_values(files, scorer: str, histories: int, seed: int, shape: tuple[int, int, int]):
    import numpy as np
    component = get(files, f"Sc/{scorer}/Component")
    half = [number(get(files, f"Ge/{component}/HL{a}"), 10.0) for a in "XYZ"]
    spread = number(get(files, "So/Beam/BeamPositionSpreadX"), 0.5)
    axes = [(np.arange(n) + 0.5) * 2 * h / n - h for n, h in zip(shape, half)]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    radius2 = x ** 2 + y ** 2  # a beam along -Z: a Gaussian core and a scatter tail
    depth = half[2] - z
    mean = 1e-12 * np.exp(-0.05 * depth) * (np.exp(-radius2 / (2 * spread ** 2 + 1.0))
                                            + 0.02 * np.exp(-np.sqrt(radius2) / 3.0))
    p = np.clip(0.3 * mean / mean.max(), 1e-4, 1.0)
    hits = np.random.default_rng(seed).binomial(histories, p)
    deposit = mean / p
    total = hits * deposit
    average = total / histories
    moment = hits * (deposit - average) ** 2 + (histories - hits) * average ** 2
    values = {"Sum": total, "Mean": average, "Count_in_Bin": hits.astype(float),
              "Second_Moment": moment, "Variance": moment / (histories - 1),
              "Standard_Deviation": np.sqrt(moment / (histories - 1)),
              "Histories_with_Scorer_Active": np.full(shape, float(histories)),
              "Min": np.where(hits > 0, deposit, 9e99), "Max": np.where(hits > 0, deposit, -9e99)}
    return values


def write_scorer(files, scorer: str, main: str, histories: int, seed: int) -> str:
    import numpy as np
    component = get(files, f"Sc/{scorer}/Component")
    quantity = get(files, f"Sc/{scorer}/Quantity")
    shape = tuple(int(get(files, f"Ge/{component}/{a}Bins", "1")) for a in "XYZ")
    half = [number(get(files, f"Ge/{component}/HL{a}"), 10.0) for a in "XYZ"]
    wanted = statistics(files, scorer)
    values = dose_values(files, scorer, histories, seed, shape)  # type: ignore[arg-type]
    unit = "Gy" if quantity == "DoseToMedium" else "MeV"
    header = [f"# TOPAS Version: {VERSION}", f"# Parameter File: {main}",
              f"# Results for scorer: {scorer}", f"# Scored in component: {component}"]
    for axis, n, h in zip("XYZ", shape, half):
        header.append(f"# {axis} in {n} {'bin ' if n == 1 else 'bins'} of {2 * h / n:g} cm")
    header.append(f"# {quantity} ( {unit} ) : " + "   ".join(wanted) + "   ")
    output = get(files, f"Sc/{scorer}/OutputFile", scorer)
    kind = (get(files, f"Sc/{scorer}/OutputType", "csv") or "csv").lower()
    if kind == "binary":
        Path(f"{output}.binheader").write_text("\n".join(header + [f"# Binary file: {output}.bin"]) + "\n")
        stacked = np.stack([values[s].transpose(2, 1, 0) for s in wanted], axis=-1)  # x fastest
        stacked.astype("<f8").tofile(f"{output}.bin")
        return f"{output}.binheader"
    rows = ["\n".join(header)]
    for i in range(shape[0]):
        for j in range(shape[1]):
            for k in range(shape[2]):
                rows.append(f"{i}, {j}, {k}, " + ", ".join(f"{values[s][i, j, k]:.16g}" for s in wanted))
    Path(f"{output}.csv").write_text("\n".join(rows) + "\n")
    return f"{output}.csv"


def write_phase_space(files, scorer: str, histories: int, seed: int) -> str:
    import numpy as np
    output = get(files, f"Sc/{scorer}/OutputFile", scorer)
    count = min(histories, 2000)
    rng = np.random.default_rng(seed)
    energy = rng.uniform(0.5, 1.25, count)
    lines = [f"{x:12.6g} {y:12.6g} {0:12.6g} {0.0:12.6g} {0.0:12.6g} {e:12.6g} {1:12.6g} {22:12d}  1  1 "
             for x, y, e in zip(rng.normal(0, 1, count), rng.normal(0, 1, count), energy)]
    Path(f"{output}.phsp").write_text("\n".join(lines) + "\n")
    Path(f"{output}.header").write_text("\n".join([
        "TOPAS ASCII Phase Space", "", f"Number of Original Histories: {histories}",
        f"Number of Original Histories that Reached Phase Space: {count}",
        f"Number of Scored Particles: {count}", "", "Columns of data are as follows:",
        " 1: Position X [cm]", " 2: Position Y [cm]", " 3: Position Z [cm]",
        " 4: Direction Cosine X", " 5: Direction Cosine Y", " 6: Energy [MeV]", " 7: Weight",
        " 8: Particle Type (in PDG Format)",
        " 9: Flag to tell if Third Direction Cosine is Negative (1 means true)",
        "10: Flag to tell if this is the First Scored Particle from this History (1 means true)",
        "", f"Number of gamma: {count}", "", f"Minimum Kinetic Energy of gamma: {energy.min():g} MeV",
        "", f"Maximum Kinetic Energy of gamma: {energy.max():g} MeV", ""]))
    return f"{output}.header"


def run(argv: list[str]) -> int:
    print(f"\nWelcome to TOPAS, Tool for Particle Simulation (Version {VERSION}) [stand-in]")
    if len(argv) != 1 or argv[0].startswith("-"):
        raise Stop(1, "usage: topas <parameter file>")
    main = argv[0]
    files = read(Path(main))
    if (get(files, "Ts/UseQt", "False") or "").lower() in ("true", "t", "1") and not os.environ.get("DISPLAY"):
        raise Stop(134, "qt.qpa.xcb: could not connect to display\nThis application failed to "
                        "start because no Qt platform plugin could be initialized.")
    data = geant4_data(files)
    seed = int(get(files, "Ts/Seed", "1") or 1)
    threads = int(get(files, "Ts/NumberOfThreads", "1") or 1)
    sources = names(files, r"^so/[^/]+/type$")
    per_run = sum(int(get(files, f"So/{s}/NumberOfHistoriesInRun", "0") or 0) for s in sources)
    histories = per_run * int(get(files, "Tf/NumberOfSequentialTimes", "1") or 1)
    where = data or os.environ.get("G4LEDATA", "")
    read_only = bool(where) and not os.access(where, os.W_OK)
    print(f"stand-in: seed {seed}, threads {threads}, histories {histories}, "
          f"sources {','.join(sources)}, Geant4 data {where} (read-only: {'yes' if read_only else 'no'})")
    if histories <= 0:
        raise Stop(1, "No histories to run: set i:So/<source>/NumberOfHistoriesInRun")
    for scorer in names(files, r"^sc/[^/]+/quantity$"):
        if get(files, f"Sc/{scorer}/Quantity") == "PhaseSpace":
            written = write_phase_space(files, scorer, histories, seed)
        else:
            written = write_scorer(files, scorer, main, histories, seed)
        print(f"stand-in: wrote {written}")
    print("Execution of TOPAS complete.")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(run(sys.argv[1:]))
    except Stop as stop:
        print(str(stop), file=sys.stderr)
        sys.exit(stop.code)
