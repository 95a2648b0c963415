"""In-memory multimodal splits, their description, and the Lightning data module."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from mfm.data.batch import Batch

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class DataInfo:
    """What a model needs to know about a data set.

    Attributes:
        input_sizes: modality name -> features per step ``d_m``, in modality order.
        steps: modality name -> padded length ``T_m``.
        kind: ``regression`` or ``classification``.
        num_classes: number of classes (classification), else 1.
        name: a short human-readable name of the data.
    """

    input_sizes: dict[str, int]
    steps: dict[str, int]
    kind: str = "regression"
    num_classes: int = 1
    name: str = "data"


class MultimodalSplit(Dataset[int]):
    """One split held as padded tensors; batches are sliced from them in one step.

    ``split[i]`` returns ``i``; :meth:`collate` turns a list of indices into a
    :class:`~mfm.data.batch.Batch`, which avoids stacking per-sample tensors.

    Args:
        features: name -> ``(N, T_m, d_m)`` float tensor, valid steps first.
        lengths: name -> ``(N,)`` long tensor of valid lengths.
        target: ``(N,)`` labels or ``None``.
        ids: optional per-sample identifiers (``N`` strings).
    """

    def __init__(
        self,
        features: dict[str, Tensor],
        lengths: dict[str, Tensor],
        target: Tensor | None,
        ids: Sequence[str] | None = None,
    ) -> None:
        self.features = features
        self.lengths = lengths
        self.target = target
        self.ids = list(ids) if ids is not None else None
        sizes = {int(x.shape[0]) for x in features.values()}
        if len(sizes) != 1:
            raise ValueError(f"modalities disagree on the number of samples: {sorted(sizes)}")
        self._size = sizes.pop()

    def __len__(self) -> int:
        return self._size

    def __getitem__(self, index: int) -> int:
        return index

    def collate(self, indices: Sequence[int]) -> Batch:
        """Gather the samples at ``indices`` into a batch."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        return Batch(
            inputs={k: v.index_select(0, idx) for k, v in self.features.items()},
            lengths={k: v.index_select(0, idx) for k, v in self.lengths.items()},
            target=None if self.target is None else self.target.index_select(0, idx),
            index=idx,
        )

    def full_batch(self) -> Batch:
        """The whole split as one batch."""
        return self.collate(range(len(self)))


@dataclass
class MultimodalData:
    """Train, validation and test splits with their shared description."""

    info: DataInfo
    splits: dict[str, MultimodalSplit] = field(default_factory=dict)

    def __getitem__(self, split: str) -> MultimodalSplit:
        return self.splits[split]


class MFMDataModule(L.LightningDataModule):
    """Serves a :class:`MultimodalData` to Lightning's Trainer.

    The training loader shuffles with its own generator seeded by ``seed``, so the
    sample order is a function of the seed alone.
    """

    def __init__(
        self, data: MultimodalData, batch_size: int, seed: int = 0, num_workers: int = 0
    ) -> None:
        super().__init__()
        self.data = data
        self.batch_size = batch_size
        self.seed = seed
        self.num_workers = num_workers

    def _loader(self, split: str, shuffle: bool) -> DataLoader[int]:
        dataset = self.data[split]
        generator = torch.Generator().manual_seed(self.seed) if shuffle else None
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            collate_fn=dataset.collate,
            generator=generator,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader[int]:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader[int]:
        return self._loader("valid", shuffle=False)

    def test_dataloader(self) -> DataLoader[int]:
        return self._loader("test", shuffle=False)
