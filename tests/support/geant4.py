"""A small stand-in for a folder of Geant4 data sets (the real ones are 2-3 GB).

Folder names and layout as Geant4 11.3's data sets unpack (G4EMLOW8.6.1/..., G4ENSDFSTATE3.0/
ENSDFSTATE.dat, ...), a few files each, with bytes that depend on the name (so two folders
made alike are alike, and changing one byte changes a data set's content key).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

DATA_SETS = {
    "G4EMLOW8.6.1": ("livermore/phot_epics2014/pe-cs-1.dat", "livermore/brem/br1.dat", "brem_SB/br1"),
    "G4ENSDFSTATE3.0": ("ENSDFSTATE.dat",),
    "PhotonEvaporation6.1": ("z1.a3", "z8.a16", "correlated_gamma/z8.a16"),
    "G4PARTICLEXS4.1": ("neutron/inel1", "proton/inel8"),
    "G4NDL4.7.1": ("Elastic/CrossSection/1_1_Hydrogen.z", "Inelastic/F01/CrossSection/8_16_Oxygen.z"),
    "RadioactiveDecay6.1.2": ("z8.a15",),
}


def make_geant4_data(folder: Path, sets: tuple[str, ...] | None = None, size: int = 20_000,
                     salt: str = "") -> Path:
    """Data sets under `folder` (all of DATA_SETS, or those named), `size` bytes per file;
    another `salt` gives other bytes (other content keys: tests sharing one Azurite apart)."""
    for name in sets or tuple(DATA_SETS):
        for relative in DATA_SETS[name]:
            path = folder / name / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            seed = hashlib.sha256(f"{salt}{name}/{relative}".encode()).digest()
            path.write_bytes((seed * (size // len(seed) + 1))[:size])
    return folder
