"""Readers of the data formats users already have, and format detection.

============  ==========================================================================
format        what ``spec`` points at
============  ==========================================================================
synthetic     ``synthetic[:key=value,...]``: the generated data set
npz           the generic format: one ``.npz`` file, or a folder of ``train.npz``,
              ``valid.npz``, ``test.npz`` (:mod:`mfm.data.formats.npz`)
mfn           a folder of MFN h5 files (:mod:`mfm.data.formats.mfn_h5`)
mmsa          an MMSA pickle, e.g. ``aligned_50.pkl`` (:mod:`mfm.data.formats.pickles`)
multibench    a MultiBench affect pickle, e.g. ``mosi_raw.pkl``
============  ==========================================================================

Pickles are read by a restricted unpickler that only builds plain containers, numbers,
strings and numpy arrays.
"""

from __future__ import annotations

from pathlib import Path

from mfm.config import DataConfig
from mfm.data.errors import DataError
from mfm.data.raw import RawData

FORMATS = ("synthetic", "npz", "mfn", "mmsa", "multibench")


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """Split ``source:key=value,key=value`` into the source and its options.

    Raises:
        DataError: an option is not of the form ``key=value``.
    """
    source, _, rest = spec.partition(":")
    options: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise DataError(f"data spec {spec!r}: option {item!r} is not of the form key=value")
        options[key.strip()] = value.strip()
    return source.strip(), options


def detect_format(path: Path) -> str:
    """Guess the format of ``path`` from its name and contents.

    Raises:
        DataError: the path does not exist or matches no format.
    """
    from mfm.data.formats.mfn_h5 import is_mfn_folder

    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_dir():
        if is_mfn_folder(path):
            return "mfn"
        if any((path / f"{s}.npz").is_file() for s in ("train", "valid", "test")):
            return "npz"
        raise DataError(
            f"{path}: folder holds neither MFN h5 files (<modality>_<split>.h5, y_<split>.h5) "
            "nor train.npz/valid.npz/test.npz"
        )
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return "npz"
    if suffix in (".pkl", ".pickle", ".pk"):
        return "pickle"
    raise DataError(
        f"{path}: unknown file type {suffix or '(no suffix)'!r}; expected .npz, .pkl or an "
        f"MFN h5 folder (or set the format: {', '.join(FORMATS)})"
    )


def read_raw(cfg: DataConfig) -> RawData:
    """Read the data ``cfg.spec`` names into :class:`RawData` (no validation yet)."""
    from mfm.data.synthetic import SyntheticOptions, generate_synthetic

    source, options = parse_spec(cfg.spec)
    fmt = cfg.format
    if fmt == "synthetic" or (fmt == "auto" and source == "synthetic"):
        try:
            return generate_synthetic(SyntheticOptions.from_strings(options))
        except ValueError as exc:
            raise DataError(str(exc)) from exc
    path = Path(cfg.spec).expanduser()
    if fmt == "auto":
        fmt = detect_format(path)
    elif not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if fmt == "npz":
        from mfm.data.formats.npz import read_npz

        return read_npz(path)
    if fmt == "mfn":
        from mfm.data.formats.mfn_h5 import read_mfn_folder

        return read_mfn_folder(path)
    from mfm.data.formats.pickles import read_pickle

    flavour = "auto" if fmt == "pickle" else fmt
    return read_pickle(path, flavour=flavour, text_feature=cfg.text_feature)
