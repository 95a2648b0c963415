"""Data: padded batches, in-memory splits, the synthetic default and the loader entry point.

A data *spec* is a string naming a source and its options::

    synthetic                          # the generated default
    synthetic:modalities=2,task=classification,steps=30/12

:func:`load` turns a spec into a :class:`MultimodalData`.
"""

from __future__ import annotations

from mfm.data.batch import Batch, lengths_from_padding, step_mask, to_right_padded
from mfm.data.dataset import DataInfo, MFMDataModule, MultimodalData, MultimodalSplit
from mfm.data.synthetic import SyntheticOptions, make_synthetic

__all__ = [
    "Batch",
    "DataError",
    "DataInfo",
    "MFMDataModule",
    "MultimodalData",
    "MultimodalSplit",
    "SyntheticOptions",
    "lengths_from_padding",
    "load",
    "make_synthetic",
    "parse_spec",
    "step_mask",
    "to_right_padded",
]


class DataError(ValueError):
    """The data spec or the data it names is invalid (one-line message)."""


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


def load(spec: str = "synthetic") -> MultimodalData:
    """Load the train/valid/test splits that ``spec`` names.

    Raises:
        DataError: unknown source, bad option, or invalid data.
    """
    source, options = parse_spec(spec)
    if source == "synthetic":
        try:
            return make_synthetic(SyntheticOptions.from_strings(options))
        except ValueError as exc:
            raise DataError(str(exc)) from exc
    raise DataError(f"data spec {spec!r}: unknown source {source!r} (expected: synthetic)")
