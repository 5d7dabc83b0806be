"""DICOM RT Dose files of a merged 3-D dose scorer, for a treatment-planning system or
3D Slicer: the dose (Gy) and its relative standard error.

A scorer is written when it is a dose in Gy on a box grid (X, Y and Z bins with widths),
without energy or time bins. The geometry comes from the TOPAS binning: the component's
own axes are taken as the patient axes (ImageOrientationPatient 1\\0\\0\\0\\1\\0), columns
run along X, rows along Y, frames along Z; ImagePositionPatient is the centre of voxel
(0, 0, 0) relative to the component's centre, in mm (the header does not say where the
component sits in the world), PixelSpacing is (Y width, X width) and
GridFrameOffsetVector the Z centres from the first. Pixels are 32-bit unsigned integers
times DoseGridScaling. The dose is the merged Sum: the dose of all simulated histories
(their number is in the series description, to scale to a prescription). The
uncertainty file holds the relative standard error (a fraction, DoseType ERROR, units
RELATIVE; 0 where there is no dose). UIDs are derived from the content, so a merge
repeated on the same inputs writes the same files. pydicom is optional on the reducer
node: imported lazily, without it dicom_missing() says why nothing was written.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from common.topas.geometry import axes
from common.topas.header import ScorerHeader
from common.topas.summary import ScorerView

_MILLIMETRES = {"mm": 1.0, "cm": 10.0, "m": 1000.0, "um": 1e-3}
_PIXEL_TOP = 4.0e9  # the maximum's pixel value: below 2**32 even after rounding the scale
_MANUFACTURER = "TOPAS merge (common.topas)"


def dicom_missing() -> str | None:
    """None if RT Dose files can be written, else a one-line reason."""
    try:
        import pydicom  # noqa: F401
    except ImportError:
        return "DICOM RT Dose files skipped: pydicom is not installed on this machine"
    return None


def is_dose_grid(header: ScorerHeader) -> bool:
    """Whether the scorer is a dose in Gy on an X/Y/Z box grid with known bin widths."""
    found = axes(header)
    return (header.unit == "Gy" and not header.n_extra_bins and len(found) == 3
            and [axis.name for axis in found] == ["X", "Y", "Z"]
            and all(axis.width and axis.unit in _MILLIMETRES for axis in found))


def write_rt_dose(view: ScorerView, dose_path: Path, error_path: Path) -> str | None:
    """Write the dose and relative-uncertainty files; None, or why nothing was written."""
    if view.per_history and not view.histories:
        return "DICOM RT Dose files skipped: the dose needs the number of histories"
    dose = np.nan_to_num(view.estimate * (view.histories if view.per_history else 1),
                         nan=0.0)
    relative = view.relative_error if view.relative_error is not None else (
        view.relative_batch_error)
    if not np.any(dose > 0) or np.any(dose < 0):
        return "DICOM RT Dose files skipped: the dose is not positive"
    error = np.where(dose > 0, np.nan_to_num(relative, nan=0.0, posinf=0.0), 0.0) if (
        relative is not None) else None
    histories = f"{view.histories} histories" if view.histories else "histories unknown"
    story = f"TOPAS {view.header.scorer_name}: {histories} in {view.runs} runs"
    shared = _shared_uids(view, dose)
    dose_path.parent.mkdir(parents=True, exist_ok=True)
    _dataset(view.header, dose, "PHYSICAL", "GY", f"{story}; dose of all histories (Gy)",
             shared, 1).save_as(dose_path, write_like_original=False)
    if error is not None:
        _dataset(view.header, error, "ERROR", "RELATIVE",
                 f"{story}; relative standard error (fraction, 1 sd)", shared, 2
                 ).save_as(error_path, write_like_original=False)
    elif error_path.exists():
        error_path.unlink()
    return None


def _shared_uids(view: ScorerView, dose: np.ndarray) -> dict[str, str]:
    from pydicom.uid import generate_uid
    digest = hashlib.sha256(dose.tobytes()).hexdigest()
    seed = [view.header.scorer_name, digest, str(view.histories)]
    return {"study": generate_uid(entropy_srcs=seed + ["study"]),
            "frame": generate_uid(entropy_srcs=seed + ["frame"]), "seed": digest}


def _dataset(header: ScorerHeader, grid: np.ndarray, dose_type: str, units: str,
             description: str, shared: dict[str, str], series: int) -> Any:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, RTDoseStorage, generate_uid
    instance = generate_uid(entropy_srcs=[shared["seed"], dose_type, "instance"])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RTDoseStorage
    meta.MediaStorageSOPInstanceUID = instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.is_little_endian, ds.is_implicit_VR = True, False
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = RTDoseStorage, instance, "RTDOSE"
    _patient_and_study(ds, shared, description, series, dose_type)
    _geometry(ds, header)
    _pixels(ds, grid)
    ds.DoseUnits, ds.DoseType, ds.DoseSummationType = units, dose_type, "PLAN"
    return ds


def _patient_and_study(ds: Any, shared: dict[str, str], description: str, series: int,
                       dose_type: str) -> None:
    from pydicom.uid import generate_uid
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = (
        "TOPAS^Simulation", "TOPAS", "", "")
    ds.StudyInstanceUID, ds.StudyID, ds.StudyDate, ds.StudyTime = (
        shared["study"], "TOPAS", "", "")
    ds.ReferringPhysicianName, ds.AccessionNumber = "", ""
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[shared["seed"], dose_type, "series"])
    ds.SeriesNumber, ds.InstanceNumber = series, 1
    ds.SeriesDescription = description[:64]
    ds.ImageComments = description
    ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = shared["frame"], ""
    ds.Manufacturer = _MANUFACTURER


def _geometry(ds: Any, header: ScorerHeader) -> None:
    x, y, z = axes(header)
    scale = [_MILLIMETRES[str(axis.unit)] for axis in (x, y, z)]
    first = [float(axis.centres()[0]) * factor for axis, factor in zip((x, y, z), scale)]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [round(value, 6) for value in first]
    ds.PixelSpacing = [round(float(y.width or 0) * scale[1], 6),
                       round(float(x.width or 0) * scale[0], 6)]
    ds.SliceThickness = round(float(z.width or 0) * scale[2], 6)
    offsets = (z.centres() - z.centres()[0]) * scale[2]
    ds.GridFrameOffsetVector = [round(float(value), 6) for value in offsets]
    ds.FrameIncrementPointer = 0x3004000C  # frames are placed by GridFrameOffsetVector


def _pixels(ds: Any, grid: np.ndarray) -> None:
    """(i, j, k) grid -> frames along Z, rows along Y, columns along X."""
    frames = np.transpose(grid, (2, 1, 0))
    # DoseGridScaling is a decimal string of at most 16 characters: the pixels are made
    # with the scale exactly as written.
    text = f"{float(frames.max()) / _PIXEL_TOP if frames.max() > 0 else 1.0:.9e}"
    scaling = float(text)
    pixels = np.rint(frames / scaling).astype("<u4")
    ds.NumberOfFrames, ds.Rows, ds.Columns = frames.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 32, 32, 31, 0
    ds.DoseGridScaling = text
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
