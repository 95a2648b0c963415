"""The generic format for users' own features: NumPy ``.npz`` archives.

Two layouts, the same keys:

* one file ``data.npz`` whose keys carry the split: ``train/<modality>``,
  ``train/<modality>.lengths``, ``train/labels``, ``train/ids`` (and ``valid/...``,
  ``test/...``);
* a folder with ``train.npz``, ``valid.npz`` and ``test.npz`` whose keys have no split
  prefix: ``<modality>``, ``<modality>.lengths``, ``labels``, ``ids``.

Per split:

* ``<modality>``: ``(N, T, d)`` float sequences, or ``(N, d)`` static vectors; modality
  names are free (no ``/`` or ``.``);
* ``<modality>.lengths`` (optional): ``(N,)`` integers; without it lengths are inferred
  from all-zero padding steps;
* ``labels``: ``(N,)`` floats (regression) or integers (classes), or ``(N, k)``
  (one-hot rows, or several targets);
* ``ids`` (optional): ``(N,)`` strings.

An optional top-level ``padding`` key holds ``"left"`` or ``"right"`` (default ``right``):
the side where padding sits. Files are read with ``allow_pickle=False``: object arrays are
refused, so an ``.npz`` cannot carry code.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from mfm.data.errors import DataError
from mfm.data.raw import RawData, RawSplit

SPLIT_NAMES = ("train", "valid", "test")


def _read_archive(path: Path) -> dict[str, np.ndarray]:
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path}: not a readable .npz archive (not a zip file)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "Object arrays" in str(exc):
            raise DataError(
                f"{path}: holds object (pickled) arrays; expected plain numeric or string "
                "arrays (saved with allow_pickle=False)"
            ) from exc
        raise DataError(f"{path}: not a readable .npz archive ({exc})") from exc
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{path}: not a readable .npz archive ({type(exc).__name__})") from exc


def _split_from_keys(arrays: dict[str, np.ndarray], file: str, prefix: str) -> RawSplit:
    split = RawSplit(features={})
    for key, value in arrays.items():
        name = key[len(prefix):]
        where = f"{file}: {key}"
        if name == "labels":
            split.labels = value
            split.origin["labels"] = where
        elif name == "ids":
            split.ids = [str(v) for v in value.reshape(-1)]
        elif name.endswith(".lengths"):
            modality = name[: -len(".lengths")]
            split.lengths[modality] = value
            split.origin[f"lengths/{modality}"] = where
        else:
            split.features[name] = value
            split.origin[name] = where
    return split


def _padding(arrays: dict[str, np.ndarray], file: str) -> str:
    if "padding" not in arrays:
        return "right"
    side = str(arrays["padding"].reshape(-1)[0]) if arrays["padding"].size else ""
    if side not in ("left", "right"):
        raise DataError(f"{file}: padding: expected 'left' or 'right', found {side!r}")
    return side


def read_npz(path: Path) -> RawData:
    """Read the generic format from one ``.npz`` file or a folder of three."""
    if path.is_dir():
        splits: dict[str, RawSplit] = {}
        sides: dict[str, str] = {}
        for split in SPLIT_NAMES:
            file = path / f"{split}.npz"
            if not file.is_file():
                continue
            arrays = _read_archive(file)
            sides[str(file)] = _padding(arrays, str(file))
            arrays.pop("padding", None)
            splits[split] = _split_from_keys(arrays, str(file), "")
        if not splits:
            raise DataError(f"{path}: no train.npz, valid.npz or test.npz in this folder")
        if len(set(sides.values())) > 1:
            detail = ", ".join(f"{Path(f).name}: {v}" for f, v in sides.items())
            raise DataError(f"{path}: padding: the files disagree ({detail}); expected one side")
        padding = next(iter(sides.values()))
        return RawData(str(path), splits, padding, name=path.name)  # type: ignore[arg-type]
    arrays = _read_archive(path)
    padding = _padding(arrays, str(path))
    arrays.pop("padding", None)
    splits = {}
    for split in SPLIT_NAMES:
        prefix = f"{split}/"
        keys = {k: v for k, v in arrays.items() if k.startswith(prefix)}
        if keys:
            splits[split] = _split_from_keys(keys, str(path), prefix)
    stray = sorted(k for k in arrays if not k.startswith(tuple(f"{s}/" for s in SPLIT_NAMES)))
    if stray:
        raise DataError(
            f"{path}: {stray[0]}: unexpected key; expected keys like train/<modality>, "
            "train/labels, valid/..., test/... (see the generic format in the README)"
        )
    return RawData(str(path), splits, padding, name=path.stem)  # type: ignore[arg-type]


def write_npz(data: RawData, path: Path) -> None:
    """Write ``data`` as one generic ``.npz`` file (atomically: temp file, then rename)."""
    arrays: dict[str, np.ndarray] = {"padding": np.array(data.padding)}
    for split_name, split in data.splits.items():
        for name, x in split.features.items():
            arrays[f"{split_name}/{name}"] = x
        for name, n in split.lengths.items():
            arrays[f"{split_name}/{name}.lengths"] = n
        if split.labels is not None:
            arrays[f"{split_name}/labels"] = split.labels
        if split.ids is not None:
            arrays[f"{split_name}/ids"] = np.array(split.ids)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)
