"""TOPAS binary scorer outputs: a `.binheader` ('#' header) beside a `.bin` data file.

The `.bin` is raw little-endian float64 with no index columns (TsVBinnedScorer::
PrintBinary): voxels with x fastest (loops k, j, i), inside each voxel its energy/time
bins in order, and inside each of those the reported statistics in header order. Every
bin is written (no sparse output), so the file size is fixed by the header. The data is
read from the `.bin` beside the `.binheader` with the same stem, as TOPAS itself does
when restoring results (the header's "Binary file:" line may name the file before it
was renamed). Produces and takes the same Scorer as the CSV reader.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from common.errors import ToolError
from common.topas.header import ScorerHeader, read_header
from common.topas.scorer import Scorer, all_indices

_FLOAT64 = np.dtype("<f8")


def binary_pair(path: Path) -> tuple[Path, Path]:
    """The (.binheader, .bin) pair of either file's path."""
    path = Path(path)
    return path.with_suffix(".binheader"), path.with_suffix(".bin")


def read_binary_scorer(path: Path, statistics: Sequence[str] | None = None) -> Scorer:
    """Read a binary scorer, given its `.binheader` or `.bin`; see read_scorer()."""
    header_path, data_path = binary_pair(path)
    header = read_header(header_path)
    wanted = _wanted(header, statistics, header_path)
    cube = _read_cube(data_path, header)
    # cube axes: k, j, i, [energy bin,] statistic. Bin number = i*Nj*Nk + j*Nk + k: one
    # strided copy per statistic puts its values in bin order.
    values = {name: np.ascontiguousarray(np.moveaxis(
        cube[..., header.statistics.index(name)], (0, 1, 2), (2, 1, 0))).reshape(
        (header.n_bins,) + cube.shape[3:-1]) for name in wanted}
    return Scorer(header=header, indices=all_indices(header), values=values,
                  every_bin_in_order=True)


def write_binary_scorer(path: Path, header: ScorerHeader,
                        values: Mapping[str, np.ndarray]) -> None:
    """Write `.binheader` (exactly header.lines) and `.bin` for every bin, in bin order.

    Each file appears complete or not at all (written aside, then renamed).
    """
    header_path, data_path = binary_pair(path)
    if set(values) != set(header.statistics):
        raise ValueError(f"values for {sorted(values)}, header reports {header.statistics}")
    tail = (header.n_extra_bins,) if header.n_extra_bins else ()
    stacked = np.stack([np.asarray(values[name], dtype=_FLOAT64)
                        for name in header.statistics], axis=-1)
    if stacked.shape != (header.n_bins,) + tail + (len(header.statistics),):
        raise ValueError(f"value arrays of shape {stacked.shape[:-1]} do not fit the header")
    ni, nj, nk = header.shape or (1, 1, 1)
    cube = np.moveaxis(stacked.reshape((ni, nj, nk) + stacked.shape[1:]), (0, 1, 2),
                       (2, 1, 0))
    _replace(data_path, np.ascontiguousarray(cube, dtype=_FLOAT64).tobytes())
    _replace(header_path, "".join(line + "\n" for line in header.lines).encode())


def _wanted(header: ScorerHeader, statistics: Sequence[str] | None,
            path: Path) -> tuple[str, ...]:
    if statistics is None:
        return header.statistics
    unknown = [name for name in statistics if name not in header.statistics]
    if unknown:
        raise ToolError(f"{path}: does not report {', '.join(unknown)}")
    return tuple(name for name in header.statistics if name in statistics)


def _read_cube(path: Path, header: ScorerHeader) -> np.ndarray:
    ni, nj, nk = header.shape or (1, 1, 1)
    shape = (nk, nj, ni) + ((header.n_extra_bins,) if header.n_extra_bins else ()) + (
        len(header.statistics),)
    expected = int(np.prod(shape)) * _FLOAT64.itemsize
    try:
        size = path.stat().st_size
        if size != expected:
            raise ToolError(f"{path}: {size} bytes, but its header describes {expected} "
                            f"({_story(header)} float64 values); truncated or not this "
                            "scorer's data?")
        return np.fromfile(path, dtype=_FLOAT64).reshape(shape)
    except FileNotFoundError:
        raise ToolError(f"{path}: missing; the binary scorer's data file should be beside "
                        f"its .binheader") from None
    except OSError as error:
        raise ToolError(f"{path}: cannot read: {error.strerror or error}") from error


def _story(header: ScorerHeader) -> str:
    story = f"{header.n_bins} voxels x {len(header.statistics)} statistics"
    if header.n_extra_bins:
        story += f" x {header.n_extra_bins} energy/time bins"
    return story


def _replace(path: Path, data: bytes) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    os.replace(partial, path)
