"""Arrays as a reader found them in a file, before any checking.

Every format reader (:mod:`mfm.data.formats`) returns a :class:`RawData`; one pipeline
(:mod:`mfm.data.prepare`) then validates it at the boundary, cleans it and turns it into
tensors. Readers only read: they record *where* each array came from (``origin``) so that
every later error can name the file and the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np


@dataclass
class RawSplit:
    """One split as read.

    Attributes:
        features: modality -> ``(N, T, d)`` sequences or ``(N, d)`` static vectors.
        labels: ``(N,)`` or ``(N, k)`` labels (one-hot rows, a scale, class indices), or
            ``None`` when the file has none.
        lengths: modality -> ``(N,)`` valid lengths; a modality without an entry has
            its lengths inferred from its all-zero padding steps.
        ids: per-sample identifiers, if the file has them.
        targets: other named label arrays, ``(N,)`` each (e.g. CH-SIMS unimodal labels),
            selectable instead of ``labels``.
        origin: for error messages: ``<modality>``, ``labels``, ``lengths/<modality>``,
            ``targets/<name>`` -> ``"<file>: <key>"``.
    """

    features: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    lengths: dict[str, np.ndarray] = field(default_factory=dict)
    ids: list[str] | None = None
    targets: dict[str, np.ndarray] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)

    def where(self, key: str, fallback: str) -> str:
        """``"<file>: <key>"`` of an array, or ``fallback`` when unknown."""
        return self.origin.get(key, fallback)


@dataclass
class RawData:
    """All splits of a data set as read.

    Attributes:
        source: the path the data came from (used in messages).
        splits: ``train``, ``valid``, ``test`` -> :class:`RawSplit`; a reader that finds
            a split missing leaves it out and the pipeline reports it.
        padding: side of the padding in the arrays: ``left`` (leading zeros), ``right``,
            or ``auto`` (either; lengths inferred from both ends).
        name: a short name for tables.
        default_target: the target selection (``DataConfig.target`` syntax) used when the
            user gives none; ``None`` means the main labels.
    """

    source: str
    splits: dict[str, RawSplit]
    padding: Literal["left", "right", "auto"] = "right"
    name: str = "data"
    default_target: str | None = None
