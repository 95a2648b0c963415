"""Padded multimodal batches and the tensors that describe their padding.

Conventions used everywhere in :mod:`mfm`:

* a modality's features are a float tensor of shape ``(B, T_m, d_m)``: ``B`` samples,
  ``T_m`` padded steps, ``d_m`` features per step (a static vector is ``T_m = 1``);
* its per-sample valid lengths are a long tensor of shape ``(B,)`` with values in
  ``[0, T_m]``;
* inside a :class:`Batch` the valid steps come first and padding trails
  ("right padding"). Data padded at the front (the MFN, MultiBench and many COVAREP
  releases pad with leading zeros) is moved into that layout once, when data is loaded
  (:mod:`mfm.data.prepare`; :meth:`Batch.from_padded` for tensors built by hand), so the
  model never has to know which side the padding was on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from mfm.config import DEFAULT_TARGET

PaddingSide = Literal["left", "right"]


def step_mask(lengths: Tensor, steps: int) -> Tensor:
    """Return the valid-step mask of right-padded sequences.

    Args:
        lengths: ``(B,)`` valid lengths.
        steps: padded length ``T``.

    Returns:
        ``(B, T)`` bool tensor, True where step ``t < lengths[b]``.
    """
    return torch.arange(steps, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)


def to_right_padded(x: Tensor, lengths: Tensor, side: PaddingSide) -> Tensor:
    """Move the valid steps of each sequence to the front and zero the padding.

    Args:
        x: ``(B, T, d)`` padded sequences.
        lengths: ``(B,)`` valid lengths.
        side: where the padding of ``x`` is: ``left`` (leading) or ``right`` (trailing).

    Returns:
        ``(B, T, d)`` tensor whose first ``lengths[b]`` steps are the valid steps of
        sample ``b`` in their original order and whose other steps are zero.
    """
    steps = x.shape[1]
    mask = step_mask(lengths, steps).unsqueeze(-1)
    if side == "right":
        return x * mask
    if side != "left":
        raise ValueError(f"padding side must be 'left' or 'right', got {side!r}")
    offset = (steps - lengths).unsqueeze(1)  # (B, 1)
    index = (torch.arange(steps, device=x.device).unsqueeze(0) + offset) % steps
    moved = torch.gather(x, 1, index.unsqueeze(-1).expand(-1, -1, x.shape[2]))
    return moved * mask


def lengths_from_padding(x: Tensor, side: PaddingSide) -> Tensor:
    """Infer valid lengths from all-zero padding steps.

    A step is padding when every feature is exactly zero and it lies on the padded side
    of the last (``left``) or first (``right``) non-zero step.

    Args:
        x: ``(B, T, d)`` sequences.
        side: which side holds the padding.

    Returns:
        ``(B,)`` long tensor of valid lengths.
    """
    nonzero = (x != 0).any(dim=-1)  # (B, T)
    steps = x.shape[1]
    positions = torch.arange(steps, device=x.device).expand_as(nonzero)
    if side == "left":
        first = torch.where(nonzero, positions, steps).min(dim=1).values
        return (steps - first).long()
    last = torch.where(nonzero, positions, -1).max(dim=1).values
    return (last + 1).long()


def label_mask(target: Tensor) -> Tensor:
    """Which labels are present.

    Args:
        target: ``(B,)`` float regression labels (NaN = missing) or integer class
            indices (negative = missing).

    Returns:
        ``(B,)`` bool, True where the label is present.
    """
    if target.is_floating_point():
        return ~torch.isnan(target)
    return target >= 0


@dataclass
class Batch:
    """A padded batch of multimodal samples.

    Attributes:
        inputs: modality name -> ``(B, T_m, d_m)`` float features, valid steps first.
        lengths: modality name -> ``(B,)`` long valid lengths.
        targets: target name -> ``(B,)`` labels: float for regression (NaN where the
            label is missing), long class indices for classification (-1 where
            missing); ``None`` when the data has no labels (prediction only).
        index: ``(B,)`` long positions of the samples in their split.
        label_counts: target name -> number of present labels in the batch, counted on
            the host when the batch was collated (``None``: count when asked).
    """

    inputs: dict[str, Tensor]
    lengths: dict[str, Tensor]
    targets: dict[str, Tensor] | None
    index: Tensor
    label_counts: dict[str, int] | None = None

    def __len__(self) -> int:
        return int(self.index.shape[0])

    @property
    def target(self) -> Tensor | None:
        """The first target's ``(B,)`` labels (the only one for single-target data)."""
        return None if self.targets is None else next(iter(self.targets.values()))

    def counts(self) -> dict[str, int]:
        """Target name -> number of present labels (counted now if not at collation)."""
        if self.label_counts is not None:
            return self.label_counts
        return {k: int(label_mask(v).sum()) for k, v in (self.targets or {}).items()}

    @property
    def presence(self) -> dict[str, Tensor]:
        """Modality name -> ``(B,)`` bool: True where the sample has that modality.

        A modality is absent for a sample exactly when its length is 0.
        """
        return {name: n > 0 for name, n in self.lengths.items()}

    @property
    def modalities(self) -> list[str]:
        """Modality names in a fixed order."""
        return list(self.inputs)

    @classmethod
    def from_padded(
        cls,
        inputs: Mapping[str, Tensor],
        lengths: Mapping[str, Tensor] | None = None,
        target: Tensor | dict[str, Tensor] | None = None,
        padding: PaddingSide = "right",
    ) -> Batch:
        """Build a batch from padded tensors, moving leading padding to the end.

        Args:
            inputs: name -> ``(B, T_m, d_m)``.
            lengths: name -> ``(B,)``; a missing entry means every step is valid.
            target: ``(B,)`` labels (a target named ``label``), target name -> ``(B,)``
                labels, or ``None``.
            padding: side of the padding in ``inputs``.
        """
        if isinstance(target, Tensor):
            target = {DEFAULT_TARGET: target}
        lengths = dict(lengths or {})
        first = next(iter(inputs.values()))
        size = first.shape[0]
        out_inputs: dict[str, Tensor] = {}
        out_lengths: dict[str, Tensor] = {}
        for name, x in inputs.items():
            n = lengths.get(name)
            if n is None:
                n = torch.full((size,), x.shape[1], dtype=torch.long, device=x.device)
            n = n.to(device=x.device, dtype=torch.long)
            out_inputs[name] = to_right_padded(x, n, padding)
            out_lengths[name] = n
        return cls(out_inputs, out_lengths, None if target is None else dict(target),
                   torch.arange(size, device=first.device))
