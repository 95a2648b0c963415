"""Data: padded batches, in-memory splits, format readers, validation and the entry point.

:func:`load` reads what a :class:`~mfm.config.DataConfig` (or a bare spec string) names,
checks it at the boundary and returns tensors ready for training::

    load("synthetic")                              # the generated default
    load("synthetic:modalities=2,task=classification")
    load(DataConfig(spec="data/youtube", modalities=["audio", "video"]))
"""

from __future__ import annotations

from mfm.config import DataConfig
from mfm.data.batch import Batch, lengths_from_padding, step_mask, to_right_padded
from mfm.data.dataset import DataInfo, MFMDataModule, MultimodalData, MultimodalSplit
from mfm.data.errors import DataError
from mfm.data.formats import detect_format, parse_spec, read_raw
from mfm.data.prepare import DataWarning, Stats, prepare
from mfm.data.raw import RawData, RawSplit
from mfm.data.synthetic import SyntheticOptions, generate_synthetic

__all__ = [
    "Batch",
    "DataConfig",
    "DataError",
    "DataInfo",
    "DataWarning",
    "MFMDataModule",
    "MultimodalData",
    "MultimodalSplit",
    "RawData",
    "RawSplit",
    "SyntheticOptions",
    "detect_format",
    "generate_synthetic",
    "lengths_from_padding",
    "load",
    "parse_spec",
    "prepare",
    "read_raw",
    "step_mask",
    "to_right_padded",
]


def load(config: DataConfig | str = "synthetic", stats: Stats | None = None) -> MultimodalData:
    """Read, validate and convert the data that ``config`` names.

    Args:
        config: a :class:`DataConfig` or just its ``spec``.
        stats: normalisation statistics of a trained model to apply instead of fitting.

    Raises:
        DataError: one line naming the file, the key, what was expected and found.
    """
    cfg = DataConfig(spec=config) if isinstance(config, str) else config
    # The arrays just read are nobody else's: convert them in place.
    return prepare(read_raw(cfg), cfg, stats, consume=True)
