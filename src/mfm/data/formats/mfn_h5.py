"""The MFN release format: a folder of HDF5 files, one per modality and split.

Layout (as released with the Memory Fusion Network for YouTube, ICT-MMMO, MOUD, ...)::

    audio_train.h5  audio_valid.h5  audio_test.h5
    video_train.h5  ...
    text_train_emb.h5  text_valid_emb.h5  ...     ("<modality>_<split>_emb.h5" also works)
    y_train.h5  y_valid.h5  y_test.h5             labels

Each file holds one dataset ``d1``: ``(N, T, d)`` word-aligned features padded with
zero steps (the releases use leading zeros, some trailing: both are recognised), or the
labels: ``(N, C)`` one-hot classes, ``(N,)`` a scale, or ``(N, k)``
several targets. A modality file missing for one split makes that modality absent for
those samples (with a warning), not an error.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from mfm.data.errors import DataError
from mfm.data.raw import RawData, RawSplit

SPLIT_NAMES = ("train", "valid", "test")
_PATTERN = re.compile(r"^(?P<modality>[^.]+?)_(?P<split>train|valid|test)(?:_emb)?\.h5$")


def is_mfn_folder(path: Path) -> bool:
    """True when ``path`` is a folder with ``y_<split>.h5`` or ``<modality>_<split>.h5``."""
    return path.is_dir() and any(_PATTERN.match(p.name) for p in path.iterdir())


def _read_d1(file: Path) -> np.ndarray:
    import h5py

    try:
        with h5py.File(file, "r") as handle:
            if "d1" not in handle:
                keys = ", ".join(handle.keys()) or "none"
                raise DataError(f"{file}: d1: missing dataset (expected 'd1', found: {keys})")
            if not isinstance(handle["d1"], h5py.Dataset):
                raise DataError(f"{file}: d1: expected a dataset, found a group")
            return np.asarray(handle["d1"][()])
    except DataError:
        raise
    except (OSError, ValueError, TypeError) as exc:
        raise DataError(f"{file}: not a readable HDF5 file ({type(exc).__name__})") from exc


def read_mfn_folder(path: Path) -> RawData:
    """Read an MFN h5 folder (see the module docstring)."""
    if not path.is_dir():
        raise DataError(f"{path}: expected a folder of <modality>_<split>.h5 files")
    files: dict[str, dict[str, Path]] = {s: {} for s in SPLIT_NAMES}
    for file in sorted(path.iterdir()):
        match = _PATTERN.match(file.name)
        if match:
            files[match["split"]][match["modality"]] = file
    splits: dict[str, RawSplit] = {}
    for split_name in SPLIT_NAMES:
        found = files[split_name]
        if not found:
            continue
        split = RawSplit(features={})
        if "y" in found:
            split.labels = _read_d1(found["y"])
            split.origin["labels"] = f"{found['y']}: d1"
        for modality, file in found.items():
            if modality == "y":
                continue
            split.features[modality] = _read_d1(file)
            split.origin[modality] = f"{file}: d1"
        if split.labels is None:
            raise DataError(f"{path}: y_{split_name}.h5: missing label file (expected labels "
                            f"for the {split_name} split)")
        splits[split_name] = split
    if not splits:
        raise DataError(f"{path}: no <modality>_<split>.h5 files in this folder")
    return RawData(str(path), splits, padding="auto", name=path.name)
