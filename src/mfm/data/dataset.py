"""In-memory multimodal splits, their description, and the Lightning data module."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from mfm.config import DEFAULT_TARGET
from mfm.data.batch import Batch, label_mask

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class DataInfo:
    """What a model needs to know about a data set.

    Attributes:
        input_sizes: modality name -> features per step ``d_m``, in modality order.
        steps: modality name -> padded length ``T_m``.
        kind: ``regression`` or ``classification`` (of the first target).
        num_classes: number of classes (classification), else 1 (of the first target).
        name: a short human-readable name of the data.
        targets: target name -> ``(kind, num_classes)``, in order; empty means one target
            named ``label`` with ``kind`` and ``num_classes``.
    """

    input_sizes: dict[str, int]
    steps: dict[str, int]
    kind: str = "regression"
    num_classes: int = 1
    name: str = "data"
    targets: dict[str, tuple[str, int]] = field(default_factory=dict)

    def target_kinds(self) -> dict[str, tuple[str, int]]:
        """Target name -> ``(kind, num_classes)``, never empty."""
        return dict(self.targets) or {DEFAULT_TARGET: (self.kind, self.num_classes)}


class MultimodalSplit(Dataset[int]):
    """One split held as padded tensors; batches are sliced from them in one step.

    ``split[i]`` returns ``i``; :meth:`collate` turns a list of indices into a
    :class:`~mfm.data.batch.Batch`, which avoids stacking per-sample tensors.

    Args:
        features: name -> ``(N, T_m, d_m)`` float tensor, valid steps first.
        lengths: name -> ``(N,)`` long tensor of valid lengths.
        target: the labels: one ``(N,)`` tensor (a target named ``label``), a dict
            target name -> ``(N,)`` tensor, or ``None``. Regression targets are float
            with NaN where a label is missing; classification targets are long class
            indices with -1 where missing.
        ids: optional per-sample identifiers (``N`` strings).
    """

    def __init__(
        self,
        features: dict[str, Tensor],
        lengths: dict[str, Tensor],
        target: Tensor | dict[str, Tensor] | None,
        ids: Sequence[str] | None = None,
    ) -> None:
        self.features = features
        self.lengths = lengths
        if isinstance(target, Tensor):
            target = {DEFAULT_TARGET: target}
        self.targets: dict[str, Tensor] | None = target
        self._valid = None if target is None else {k: label_mask(v) for k, v in target.items()}
        self.ids = list(ids) if ids is not None else None
        sizes = {int(x.shape[0]) for x in features.values()}
        if len(sizes) != 1:
            raise ValueError(f"modalities disagree on the number of samples: {sorted(sizes)}")
        self._size = sizes.pop()

    @property
    def target(self) -> Tensor | None:
        """The first target's ``(N,)`` labels (the only one for single-target data)."""
        return None if self.targets is None else next(iter(self.targets.values()))

    def __len__(self) -> int:
        return self._size

    def __getitem__(self, index: int) -> int:
        return index

    def collate(self, indices: Sequence[int]) -> Batch:
        """Gather the samples at ``indices`` into a batch.

        The batch also carries each target's number of valid labels as Python ints,
        counted here on the host, so the training step never synchronises to learn that
        a target has no label in the batch.
        """
        idx = torch.as_tensor(indices, dtype=torch.long)
        targets = counts = None
        if self.targets is not None and self._valid is not None:
            targets = {k: v.index_select(0, idx) for k, v in self.targets.items()}
            counts = {k: int(v.index_select(0, idx).sum()) for k, v in self._valid.items()}
        return Batch(
            inputs={k: v.index_select(0, idx) for k, v in self.features.items()},
            lengths={k: v.index_select(0, idx) for k, v in self.lengths.items()},
            targets=targets,
            index=idx,
            label_counts=counts,
        )

    def full_batch(self) -> Batch:
        """The whole split as one batch."""
        return self.collate(range(len(self)))


@dataclass
class MultimodalData:
    """Train, validation and test splits with their shared description.

    Attributes:
        info: modalities, sizes and task.
        splits: ``train``, ``valid``, ``test``.
        normalization: per-modality ``{"mean": [...], "std": [...]}`` applied to the
            features, or ``None``; a trained model stores it to apply it again.
        report: what preparation found (a :class:`mfm.data.prepare.Report`).
    """

    info: DataInfo
    splits: dict[str, MultimodalSplit] = field(default_factory=dict)
    normalization: dict[str, dict[str, list[float]]] | None = None
    report: Any = None

    def __getitem__(self, split: str) -> MultimodalSplit:
        return self.splits[split]


class EpochShuffle(Sampler[int]):
    """A random order that is a function of ``(seed, epoch)`` alone.

    Lightning calls :meth:`set_epoch` before every epoch, so a run resumed from a checkpoint
    sees exactly the sample order the uninterrupted run would have seen.
    """

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):  # type: ignore[no-untyped-def]
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())

    def __len__(self) -> int:
        return self.size


class MFMDataModule(L.LightningDataModule):
    """Serves a :class:`MultimodalData` to Lightning's Trainer.

    The training loader shuffles with :class:`EpochShuffle`, so the sample order is a
    function of the seed and the epoch alone (and survives a resume).
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
        sampler = EpochShuffle(len(dataset), self.seed) if shuffle else None
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            collate_fn=dataset.collate,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader[int]:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader[int]:
        return self._loader("valid", shuffle=False)

    def test_dataloader(self) -> DataLoader[int]:
        return self._loader("test", shuffle=False)
