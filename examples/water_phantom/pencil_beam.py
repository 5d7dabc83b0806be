"""A small photon Monte Carlo that stands in for TOPAS in the example campaign.

A pencil beam of mono-energetic photons (a narrow Gaussian spot) enters a
water box along its central axis, +z. Photons are transported in batches with numpy (one loop
iteration moves every live photon of the batch to its next interaction), and
the dose is scored in a 3D voxel grid with TOPAS's per-history statistics. The
result is written as a TOPAS 4.x scorer CSV, so the campaign tooling merges
it exactly like a real TOPAS output.

Physics (deliberately simple, see README.md):
  * total attenuation coefficient of water: NIST table (Hubbell & Seltzer),
    log-log interpolated;
  * Compton scattering: Klein-Nishina on free electrons, sampled with Kahn's
    rejection method; its share of interactions is sigma_KN * n_e / mu;
  * the rest of mu is absorption: photoelectric below the pair threshold,
    pair production above it (the small coherent-scattering share is
    counted in there too);
  * kerma approximation: the energy given to electrons is deposited at the
    interaction point (no electron transport, hence no build-up region);
  * photons below a 10 keV cutoff deposit their energy where they are.

Usage:  python3 pencil_beam.py water_phantom.txt
Seed:   SIM_SEED from the environment if set, else i:Ts/Seed of the file.
        EXAMPLE_HISTORIES, if set, overrides the number of histories.
"""

from __future__ import annotations

import os
import re
import sys
import time
from dataclasses import dataclass

import numpy as np

ELECTRON_MASS = 0.51099895  # MeV
CLASSICAL_ELECTRON_RADIUS = 2.8179403262e-13  # cm
WATER_DENSITY = 1.0  # g/cm3
# Electrons per gram of water: 10 electrons per H2O, M = 18.01528 g/mol.
WATER_ELECTRONS_PER_GRAM = 6.02214076e23 * 10 / 18.01528
MEV_TO_JOULE = 1.602176634e-13
PHOTON_CUTOFF = 0.010  # MeV; the bottom of the attenuation table below
BATCH_SIZE = 50000  # histories transported together (fixed: output depends on it)

# NIST XCOM / Hubbell & Seltzer, "Water, Liquid": energy (MeV), mu/rho (cm2/g),
# total with coherent scattering. https://physics.nist.gov/PhysRefData/XrayMassCoef/tab4.html
_NIST_ENERGY = np.array([
    0.010, 0.015, 0.020, 0.030, 0.040, 0.050, 0.060, 0.080, 0.100, 0.150,
    0.200, 0.300, 0.400, 0.500, 0.600, 0.800, 1.000, 1.250, 1.500, 2.000,
    3.000, 4.000, 5.000, 6.000, 8.000, 10.00, 15.00, 20.00])
_NIST_MU_RHO = np.array([
    5.329, 1.673, 0.8096, 0.3756, 0.2683, 0.2269, 0.2059, 0.1837, 0.1707,
    0.1505, 0.1370, 0.1186, 0.1061, 0.09687, 0.08956, 0.07865, 0.07072,
    0.06323, 0.05754, 0.04942, 0.03969, 0.03403, 0.03031, 0.02770, 0.02429,
    0.02219, 0.01941, 0.01813])

_LENGTH_UNITS = {"mm": 0.1, "cm": 1.0, "m": 100.0}
_ENERGY_UNITS = {"keV": 1e-3, "MeV": 1.0, "GeV": 1e3}


# --------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class Setup:
    """Everything the simulation needs, in cm and MeV."""
    seed: int
    histories: int
    energy: float
    spot_sigma: tuple[float, float]    # Gaussian beam spot (0: ideal pencil)
    spot_cutoff: tuple[float, float]   # the spot is truncated at +-cutoff
    half_lengths: tuple[float, float, float]
    bins: tuple[int, int, int]
    output_file: str
    parameter_file: str

    @property
    def voxel_size(self) -> tuple[float, float, float]:
        return tuple(2 * h / n for h, n in zip(self.half_lengths, self.bins))

    @property
    def n_voxels(self) -> int:
        return self.bins[0] * self.bins[1] * self.bins[2]


_LINE = re.compile(r"^\s*(\w+):(\S+)\s*=\s*(.*?)\s*$")


def read_parameter_file(path: str) -> dict[str, object]:
    """Parse TOPAS-style `type:Name = value [unit]` lines into {Name: value}.

    i: -> int, d: -> float converted to cm or MeV, s: -> unquoted string;
    other types are kept as raw text (they are not used here).
    """
    params: dict[str, object] = {}
    with open(path, encoding="utf-8") as handle:
        for number, raw in enumerate(handle, start=1):
            line = raw.split("#", 1)[0]
            if not line.strip():
                continue
            match = _LINE.match(line)
            if not match:
                raise ValueError(f"{path}:{number}: cannot parse {raw.strip()!r}")
            kind, name, value = match.groups()
            params[name] = _convert(kind, value, f"{path}:{number}")
    return params


def _convert(kind: str, value: str, where: str) -> object:
    if kind == "i":
        return int(value)
    if kind == "s":
        return value.strip('"')
    if kind == "d":
        number, _, unit = value.partition(" ")
        unit = unit.strip()
        scale = {**_LENGTH_UNITS, **_ENERGY_UNITS}.get(unit)
        if scale is None:
            raise ValueError(f"{where}: unknown or missing unit in {value!r}")
        return float(number) * scale
    return value


def build_setup(parameter_file: str, environ: dict[str, str]) -> Setup:
    """Combine the parameter file with the environment (seed, history count)."""
    params = read_parameter_file(parameter_file)

    def need(name: str) -> object:
        if name not in params:
            raise KeyError(f"{parameter_file}: missing parameter {name}")
        return params[name]

    seed = int(environ["SIM_SEED"]) if environ.get("SIM_SEED") else int(need("Ts/Seed"))
    histories = int(environ.get("EXAMPLE_HISTORIES") or need("So/Beam/NumberOfHistoriesInRun"))
    spot = str(params.get("So/Beam/BeamPositionDistribution", "None"))
    if spot not in ("None", "Gaussian"):
        raise ValueError(f"{parameter_file}: BeamPositionDistribution must be None or Gaussian")
    gaussian = spot == "Gaussian"
    setup = Setup(
        seed=seed,
        histories=histories,
        energy=float(need("So/Beam/BeamEnergy")),
        spot_sigma=tuple(float(need(f"So/Beam/BeamPositionSpread{a}")) if gaussian else 0.0 for a in "XY"),
        spot_cutoff=tuple(float(need(f"So/Beam/BeamPositionCutoff{a}")) if gaussian else 0.0 for a in "XY"),
        half_lengths=tuple(float(need(f"Ge/Phantom/HL{a}")) for a in "XYZ"),
        bins=tuple(int(need(f"Ge/Phantom/{a}Bins")) for a in "XYZ"),
        output_file=str(params.get("Sc/DoseAtPhantom/OutputFile", "DoseAtPhantom")) + ".csv",
        parameter_file=os.path.basename(parameter_file),
    )
    if not 0 <= setup.seed < 2**31:
        raise ValueError(f"seed {setup.seed} outside 0 <= seed < 2**31")
    if setup.histories < 2:
        raise ValueError("need at least 2 histories (the variance divides by N - 1)")
    if gaussian and not all(s > 0 and 0 < c < h for s, c, h in
                            zip(setup.spot_sigma, setup.spot_cutoff, setup.half_lengths)):
        raise ValueError("a Gaussian spot needs spreads > 0 and cutoffs inside the phantom face")
    if not PHOTON_CUTOFF < setup.energy <= _NIST_ENERGY[-1]:
        raise ValueError(f"beam energy must be in ({PHOTON_CUTOFF}, {_NIST_ENERGY[-1]}] MeV")
    return setup


# --------------------------------------------------------------------------
# Cross sections
# --------------------------------------------------------------------------

def attenuation_coefficient(energy: np.ndarray | float) -> np.ndarray:
    """Linear attenuation coefficient of water (1/cm), log-log interpolated."""
    log_mu = np.interp(np.log(energy), np.log(_NIST_ENERGY), np.log(_NIST_MU_RHO))
    return np.exp(log_mu) * WATER_DENSITY


def klein_nishina_cross_section(energy: np.ndarray | float) -> np.ndarray:
    """Total Klein-Nishina cross section per free electron (cm2)."""
    k = np.asarray(energy, dtype=float) / ELECTRON_MASS
    log_term = np.log1p(2 * k)
    first = (1 + k) / k**2 * (2 * (1 + k) / (1 + 2 * k) - log_term / k)
    second = log_term / (2 * k) - (1 + 3 * k) / (1 + 2 * k) ** 2
    return 2 * np.pi * CLASSICAL_ELECTRON_RADIUS**2 * (first + second)


def compton_fraction(energy: np.ndarray) -> np.ndarray:
    """Share of interactions that are Compton scatters; the rest absorb."""
    mu_compton = klein_nishina_cross_section(energy) * WATER_ELECTRONS_PER_GRAM * WATER_DENSITY
    # Free-electron KN slightly exceeds the bound-electron value at low
    # energy; never let the share exceed one.
    return np.minimum(mu_compton / attenuation_coefficient(energy), 1.0)


def sample_compton(rng: np.random.Generator, energy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Kahn's rejection method for Klein-Nishina: (scattered energy, cos theta).

    Works on the ratio x = E / E' in [1, 1 + 2k]; only the photons whose
    proposal was rejected are resampled on each pass.
    """
    k = energy / ELECTRON_MASS
    ratio = np.empty_like(energy)
    todo = np.arange(energy.size)
    while todo.size:
        kt = k[todo]
        r1, r2, r3 = rng.random((3, todo.size))
        low_branch = r1 <= (1 + 2 * kt) / (9 + 2 * kt)
        x = np.where(low_branch, 1 + 2 * kt * r2, (1 + 2 * kt) / (1 + 2 * kt * r2))
        cos_theta = 1 - (x - 1) / kt
        accept = np.where(low_branch,
                          r3 <= 4 * (1 / x - 1 / x**2),
                          r3 <= 0.5 * (cos_theta**2 + 1 / x))
        ratio[todo[accept]] = x[accept]
        todo = todo[~accept]
    return energy / ratio, 1 - (ratio - 1) / k


def rotate(direction: np.ndarray, cos_theta: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """Turn unit vectors by polar angle theta and azimuth phi about themselves."""
    u, v, w = direction.T
    sin_theta = np.sqrt(np.maximum(0.0, 1 - cos_theta**2))
    cos_phi, sin_phi = np.cos(phi), np.sin(phi)
    # Guard the usual singularity of the formula when the photon runs along z.
    perp = np.sqrt(np.maximum(1e-300, 1 - w**2))
    along_z = perp < 1e-10
    new = np.empty_like(direction)
    new[:, 0] = u * cos_theta + sin_theta * (u * w * cos_phi - v * sin_phi) / perp
    new[:, 1] = v * cos_theta + sin_theta * (v * w * cos_phi + u * sin_phi) / perp
    new[:, 2] = w * cos_theta - sin_theta * cos_phi * perp
    if along_z.any():
        sign = np.sign(w[along_z])
        new[along_z, 0] = sin_theta[along_z] * cos_phi[along_z]
        new[along_z, 1] = sin_theta[along_z] * sin_phi[along_z]
        new[along_z, 2] = sign * cos_theta[along_z]
    return new / np.linalg.norm(new, axis=1, keepdims=True)


def isotropic_directions(rng: np.random.Generator, n: int) -> np.ndarray:
    cos_theta = 2 * rng.random(n) - 1
    phi = 2 * np.pi * rng.random(n)
    sin_theta = np.sqrt(1 - cos_theta**2)
    return np.column_stack([sin_theta * np.cos(phi), sin_theta * np.sin(phi), cos_theta])


# --------------------------------------------------------------------------
# Transport
# --------------------------------------------------------------------------

@dataclass
class BatchResult:
    """Energy deposits of one batch, one entry per deposit event."""
    history: np.ndarray  # index of the history within the batch
    voxel: np.ndarray    # flat voxel index, (i * ny + j) * nz + k
    energy: np.ndarray   # MeV
    uncollided: int      # primaries that crossed the phantom without interacting
    escaped: float       # MeV carried out of the phantom by photons


def voxel_index(pos: np.ndarray, setup: Setup) -> np.ndarray:
    """Flat voxel index with k fastest, the TOPAS (<= 4.1.0) row order."""
    half = np.asarray(setup.half_lengths)
    size = np.asarray(setup.voxel_size)
    nbins = np.asarray(setup.bins)
    ijk = np.clip(((pos + half) / size).astype(np.int64), 0, nbins - 1)
    return (ijk[:, 0] * nbins[1] + ijk[:, 1]) * nbins[2] + ijk[:, 2]


def sample_spot(rng: np.random.Generator, n: int, setup: Setup) -> np.ndarray:
    """Entry points (x, y): a truncated Gaussian spot around the axis.

    The small spot keeps the beam from running exactly along the edge
    shared by the four central voxels (with an even number of bins), which
    would put every primary interaction into one of them.
    """
    xy = np.zeros((n, 2))
    for axis in range(2):
        sigma, cutoff = setup.spot_sigma[axis], setup.spot_cutoff[axis]
        if sigma == 0:
            continue
        todo = np.arange(n)
        while todo.size:
            values = rng.normal(0.0, sigma, todo.size)
            ok = np.abs(values) <= cutoff
            xy[todo[ok], axis] = values[ok]
            todo = todo[~ok]
    return xy


def transport_batch(rng: np.random.Generator, n: int, setup: Setup) -> BatchResult:
    """Track n histories until every photon has escaped or been absorbed."""
    half = np.asarray(setup.half_lengths)
    history = np.arange(n)
    pos = np.zeros((n, 3))
    pos[:, :2] = sample_spot(rng, n, setup)
    pos[:, 2] = -half[2]  # enter through the upstream face
    direction = np.tile([0.0, 0.0, 1.0], (n, 1))
    energy = np.full(n, setup.energy)
    deposits: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    uncollided, escaped = 0, 0.0
    first_step = True

    while history.size:
        # Free flight. The medium is homogeneous, so voxel boundaries do not
        # matter, and the box is convex: a flight that ends outside has left.
        step = rng.standard_exponential(history.size) / attenuation_coefficient(energy)
        pos = pos + step[:, None] * direction
        inside = np.all(np.abs(pos[:, :2]) < half[:2], axis=1) & (np.abs(pos[:, 2]) < half[2])
        if first_step:
            uncollided = int(np.count_nonzero(~inside))
            first_step = False
        escaped += float(energy[~inside].sum())
        history, pos, direction, energy = history[inside], pos[inside], direction[inside], energy[inside]
        if not history.size:
            break

        compton = rng.random(history.size) < compton_fraction(energy)
        deposit = np.where(compton, 0.0, energy)  # absorption: all of it, for now
        new_energy = energy.copy()

        # Compton: the electron's kinetic energy is deposited on the spot
        # (kerma approximation), the photon carries on, deflected.
        idx = np.flatnonzero(compton)
        scattered, cos_theta = sample_compton(rng, energy[idx])
        deposit[idx] = energy[idx] - scattered
        new_energy[idx] = scattered
        direction[idx] = rotate(direction[idx], cos_theta, 2 * np.pi * rng.random(idx.size))

        # Pair production (absorption above threshold): the pair's kinetic
        # energy stays local; the positron annihilates at rest into two
        # back-to-back 511 keV photons, which are tracked.
        pair = ~compton & (energy > 2 * ELECTRON_MASS)
        deposit[pair] = energy[pair] - 2 * ELECTRON_MASS
        new_energy[~compton] = 0.0

        # Photons below the cutoff give up their remaining energy here.
        low = (new_energy > 0) & (new_energy < PHOTON_CUTOFF)
        deposit[low] += new_energy[low]
        new_energy[low] = 0.0

        deposits.append((history, voxel_index(pos, setup), deposit))

        alive = new_energy > 0
        annihilation_dirs = isotropic_directions(rng, int(pair.sum()))
        history = np.concatenate([history[alive], history[pair], history[pair]])
        pos = np.concatenate([pos[alive], pos[pair], pos[pair]])
        direction = np.concatenate([direction[alive], annihilation_dirs, -annihilation_dirs])
        n_pairs = 2 * annihilation_dirs.shape[0]
        energy = np.concatenate([new_energy[alive], np.full(n_pairs, ELECTRON_MASS)])

    if deposits:
        hist, vox, edep = (np.concatenate(parts) for parts in zip(*deposits))
    else:
        hist = vox = np.zeros(0, dtype=np.int64)
        edep = np.zeros(0)
    return BatchResult(hist, vox, edep, uncollided, escaped)


# --------------------------------------------------------------------------
# Scoring with TOPAS per-history statistics
# --------------------------------------------------------------------------

class DoseScorer:
    """Per-voxel Sum, Count_in_Bin and Second_Moment over histories.

    A history may deposit several times in one voxel, so deposits are first
    summed per (history, voxel). Each batch's mean and second moment about
    its mean (zeros of the histories that missed the voxel included) are
    merged into the running totals with Chan et al.'s parallel update, which
    stays accurate where a raw sum of squares would cancel badly.
    """

    def __init__(self, n_voxels: int) -> None:
        self.n_voxels = n_voxels
        self.histories = 0
        self.total = np.zeros(n_voxels)
        self.mean = np.zeros(n_voxels)
        self.m2 = np.zeros(n_voxels)
        self.count = np.zeros(n_voxels, dtype=np.int64)

    def add_batch(self, batch: BatchResult, n_histories: int) -> None:
        keys = batch.history.astype(np.int64) * self.n_voxels + batch.voxel
        unique_keys, inverse = np.unique(keys, return_inverse=True)
        per_history = np.bincount(inverse, weights=batch.energy)
        voxel = unique_keys % self.n_voxels

        size = self.n_voxels
        batch_sum = np.bincount(voxel, weights=per_history, minlength=size)
        batch_mean = batch_sum / n_histories
        scored = np.bincount(voxel, minlength=size)  # (history, voxel) pairs present
        batch_m2 = (np.bincount(voxel, weights=(per_history - batch_mean[voxel]) ** 2, minlength=size)
                    + (n_histories - scored) * batch_mean**2)

        n_a, n_b = self.histories, n_histories
        n = n_a + n_b
        delta = batch_mean - self.mean
        self.m2 += batch_m2 + delta**2 * (n_a * n_b / n)
        self.mean += delta * (n_b / n)
        self.total += batch_sum
        self.count += np.bincount(voxel[per_history != 0], minlength=size)
        self.histories = n


def write_topas_csv(path: str, scorer: DoseScorer, setup: Setup) -> None:
    """Write the scorer like TOPAS 4.0 does for a divided component."""
    voxel_mass_kg = np.prod(setup.voxel_size) * WATER_DENSITY * 1e-3
    to_gray = MEV_TO_JOULE / voxel_mass_kg
    n = scorer.histories
    total = scorer.total * to_gray
    m2 = scorer.m2 * to_gray**2
    variance = m2 / (n - 1)
    columns = [total, total / n, scorer.count, m2, variance, np.sqrt(variance), np.full(total.size, n)]

    lines = [
        "# TOPAS Version: 4.0",
        f"# Parameter File: {setup.parameter_file}",
        "# Results for scorer: DoseAtPhantom",
        "# Scored in component: Phantom",
    ]
    for axis, nbins, size in zip("XYZ", setup.bins, setup.voxel_size):
        word = "bin " if nbins == 1 else "bins"  # TOPAS: "1 bin  of"
        lines.append(f"# {axis} in {nbins} {word} of {size:g} cm")
    stats = ["Sum", "Mean", "Count_in_Bin", "Second_Moment", "Variance",
             "Standard_Deviation", "Histories_with_Scorer_Active"]
    lines.append("# DoseToMedium ( Gy ) : " + "".join(s + "   " for s in stats))

    nx, ny, nz = setup.bins
    table = np.column_stack(columns)
    flat = 0
    for i in range(nx):
        for j in range(ny):
            for k in range(nz):
                values = ", ".join("%.16g" % v for v in table[flat])
                lines.append(f"{i}, {j}, {k}, {values}")
                flat += 1
    with open(path, "w", encoding="ascii", newline="\n") as handle:
        handle.write("\n".join(lines) + "\n")


# --------------------------------------------------------------------------
# Run
# --------------------------------------------------------------------------

@dataclass
class RunSummary:
    histories: int
    deposited: float   # MeV
    escaped: float     # MeV
    uncollided: int


def run(setup: Setup) -> tuple[DoseScorer, RunSummary]:
    """Transport all histories in fixed-size batches from one seeded stream."""
    rng = np.random.default_rng(setup.seed)
    scorer = DoseScorer(setup.n_voxels)
    summary = RunSummary(0, 0.0, 0.0, 0)
    remaining = setup.histories
    while remaining:
        n = min(BATCH_SIZE, remaining)
        batch = transport_batch(rng, n, setup)
        scorer.add_batch(batch, n)
        summary.histories += n
        summary.deposited += float(batch.energy.sum())
        summary.escaped += batch.escaped
        summary.uncollided += batch.uncollided
        remaining -= n
    return scorer, summary


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: {argv[0]} <parameter file>", file=sys.stderr)
        return 2
    setup = build_setup(argv[1], dict(os.environ))
    print(f"pencil_beam: {setup.parameter_file}: {setup.energy:g} MeV photon pencil beam, "
          f"water box {2 * setup.half_lengths[0]:g} x {2 * setup.half_lengths[1]:g} x "
          f"{2 * setup.half_lengths[2]:g} cm, {setup.bins[0]} x {setup.bins[1]} x {setup.bins[2]} voxels")
    source = "SIM_SEED" if os.environ.get("SIM_SEED") else "Ts/Seed"
    print(f"Seed: {setup.seed} (from {source})")
    override = " (from EXAMPLE_HISTORIES)" if os.environ.get("EXAMPLE_HISTORIES") else ""
    print(f"Histories: {setup.histories}{override}")

    start = time.perf_counter()
    scorer, summary = run(setup)
    write_topas_csv(setup.output_file, scorer, setup)
    elapsed = time.perf_counter() - start

    beam_energy = setup.histories * setup.energy
    thickness = 2 * setup.half_lengths[2]
    expected = float(np.exp(-attenuation_coefficient(setup.energy) * thickness))
    print(f"Energy deposited: {summary.deposited:.6g} MeV "
          f"({100 * summary.deposited / beam_energy:.3f} % of {beam_energy:.6g} MeV incident)")
    print(f"Energy escaped: {summary.escaped:.6g} MeV (balance error "
          f"{summary.deposited + summary.escaped - beam_energy:.3g} MeV)")
    print(f"Uncollided primaries: {summary.uncollided} of {summary.histories} = "
          f"{summary.uncollided / summary.histories:.5f} (expected exp(-mu L) = {expected:.5f})")
    print(f"Wrote {setup.output_file}")
    print(f"Elapsed: {elapsed:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
