"""Baselines and ablations of the MFM, run by the same engine (``model.kind``).

Every kind is one :class:`mfm.model.MFM` whose ``Z_y`` encoder is chosen by the kind and
whose optional parts (modality-specific factors ``Z_a,m``, decoders, MMD, surrogate path)
are switched off by it. The prediction always goes ``G_y -> head``, so checkpoints,
export, evaluation, prediction, robustness and DDP work unchanged.

=================  ===================  ========  =====================  ==========  =========
kind               Z_y from             Z_a,m     modality m rebuilt     MMD on      surrogate
                                                  from                               path
=================  ===================  ========  =====================  ==========  =========
``mfm``            MFN                  yes       ``[F_y, F_m]``         all         yes
``mfm-no-zy``      (none)               yes       ``F_m``                ``Z_a,m``   yes
``mfm-zy-only``    MFN                  no        ``F_y``                ``Z_y``     yes
``mfm-disc``       MFN                  no        (no decoders)          (none)      yes
``mfn``            MFN                  no        (no decoders)          (none)      no
``ef-lstm``        one LSTM, early      no        (no decoders)          (none)      no
                   fusion
``lf``             one LSTM per         no        (no decoders)          (none)      no
                   modality, late fusion
=================  ===================  ========  =====================  ==========  =========

* ``mfm``: the Multimodal Factorization Model.
* ``mfm-no-zy``, *no multimodal factor*: only the modality-specific factors exist; each
  modality is rebuilt from its own ``F_m``, and ``G_y`` reads the concatenated
  ``[F_1 .. F_M]`` in place of ``Z_y``, so the label is predicted from the modality-specific
  factors alone (``F_y = G_y([F_1 .. F_M])``, then the head).
* ``mfm-zy-only``, *no modality-specific factors*: ``Z_y`` must carry everything; each
  modality is rebuilt from ``F_y`` alone (the paper's "no factorization" question).
* ``mfm-disc``, *discriminative part only*: the MFM without its generative model (no
  decoders, no MMD), trained on the prediction loss. Its network is the MFN path of the MFM,
  plus the MFM's surrogate MFN for samples with absent modalities (trained with
  ``train.modality_dropout``), so on complete data it is the ``mfn`` network (with other
  random initial weights, since the surrogate MFN is built too).
* ``mfn``: the Memory Fusion Network alone (Zadeh et al., 2018), ``Z_y`` from its final
  state; an absent modality is masked at every step (no surrogate path).
* ``ef-lstm``: early fusion; the modalities' features are concatenated per step on the
  MFN's common step grid (:func:`mfm.model.mfn.aligned_view`, same ``model.alignment``) and
  read by one LSTM whose hidden size is the MFN's total cell size ``sum_m hidden_m``;
  its state at the last valid step goes through a linear layer to ``Z_y``.
* ``lf``: late fusion; one LSTM per modality (hidden size ``hidden_m``) reads the native
  sequence, the states at each modality's last valid step are concatenated and a linear
  layer gives ``Z_y``.

The baselines ``mfn``, ``ef-lstm`` and ``lf`` have no surrogate path: an absent modality
(length 0) is simply masked (``ef-lstm``: zero features; ``lf``: a zero state), and
``train.modality_dropout`` is refused for them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from mfm.model.encoders import last_valid
from mfm.model.mfn import aligned_view


@dataclass(frozen=True)
class Parts:
    """Which parts a model kind has.

    Attributes:
        zy_encoder: what infers ``Z_y``: ``mfn``, ``early`` (:class:`EarlyFusionEncoder`),
            ``late`` (:class:`LateFusionEncoder`) or ``None`` (no ``Z_y``).
        modality_factors: whether the modality-specific factors ``Z_a,m`` exist.
        decoder_input: what each decoder reads: ``joint`` (``[F_y, F_m]``), ``own``
            (``F_m``), ``shared`` (``F_y``) or ``None`` (no decoders).
        mmd: whether every existing factor gets an MMD term.
        surrogate: whether samples with absent modalities use the surrogate path.
    """

    zy_encoder: Literal["mfn", "early", "late"] | None
    modality_factors: bool
    decoder_input: Literal["joint", "own", "shared"] | None
    mmd: bool
    surrogate: bool


KINDS: dict[str, Parts] = {
    "mfm": Parts("mfn", True, "joint", True, True),
    "mfm-no-zy": Parts(None, True, "own", True, True),
    "mfm-zy-only": Parts("mfn", False, "shared", True, True),
    "mfm-disc": Parts("mfn", False, None, False, True),
    "mfn": Parts("mfn", False, None, False, False),
    "ef-lstm": Parts("early", False, None, False, False),
    "lf": Parts("late", False, None, False, False),
}
"""The parts of every ``model.kind`` (see the module docstring)."""


def parts_of(kind: str) -> Parts:
    """The parts of ``kind``; ValueError naming the known kinds otherwise."""
    try:
        return KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown model kind {kind!r} (expected one of: "
                         f"{', '.join(KINDS)})") from None


class EarlyFusionEncoder(nn.Module):
    """Early fusion: one LSTM over the per-step concatenation of every modality.

    The modalities are put on a common step grid by :func:`~mfm.model.mfn.aligned_view`
    (``aligned``: step ``t`` of each; ``resample``: segment means). A modality's inactive
    steps (padding, or the whole sequence when it is absent) enter as zeros; a sample's
    sequence ends at its last step where any modality is active.

    Args:
        input_sizes: features per step of each modality, in order.
        hidden: LSTM hidden size.
        out_size: size of ``Z_y``.
        alignment: ``auto``, ``aligned`` or ``resample`` (``model.alignment``).
        steps: the common length of ``resample`` (``model.mfn_steps``).
    """

    def __init__(self, input_sizes: Sequence[int], hidden: int, out_size: int,
                 alignment: str, steps: int) -> None:
        super().__init__()
        self.alignment = alignment
        self.steps = steps
        self.lstm = nn.LSTM(sum(input_sizes), hidden, batch_first=True)
        self.proj = nn.Linear(hidden, out_size)

    def forward(self, inputs: Sequence[Tensor], lengths: Sequence[Tensor]) -> Tensor:
        """Map ``M`` right-padded ``(B, T_m, d_m)`` tensors (padding zeroed) and their
        ``(B,)`` lengths to ``(B, out_size)``."""
        views, mask = aligned_view(list(inputs), list(lengths), self.alignment, self.steps)
        # mask: (B, S, M); zero each modality's inactive steps, then concatenate per step.
        fused = torch.cat([v * mask[:, :, i : i + 1].to(v.dtype) for i, v in enumerate(views)],
                          dim=2)  # (B, S, sum d_m)
        active = mask.any(dim=2)  # (B, S)
        steps = torch.arange(active.shape[1], device=active.device)
        # Length = one past the last active step (0 when no step is active).
        length = ((steps + 1) * active).amax(dim=1)
        outputs, _ = self.lstm(fused)
        return self.proj(last_valid(outputs, length))


class LateFusionEncoder(nn.Module):
    """Late fusion: one LSTM per modality, last valid states concatenated, then linear.

    Args:
        input_sizes: features per step of each modality, in order.
        hidden_sizes: LSTM hidden size of each modality.
        out_size: size of ``Z_y``.
    """

    def __init__(self, input_sizes: Sequence[int], hidden_sizes: Sequence[int],
                 out_size: int) -> None:
        super().__init__()
        self.lstms = nn.ModuleList(
            nn.LSTM(d, h, batch_first=True)
            for d, h in zip(input_sizes, hidden_sizes, strict=True)
        )
        self.proj = nn.Linear(sum(hidden_sizes), out_size)

    def forward(self, inputs: Sequence[Tensor], lengths: Sequence[Tensor]) -> Tensor:
        """Map ``M`` right-padded ``(B, T_m, d_m)`` tensors and their ``(B,)`` lengths to
        ``(B, out_size)``; an absent modality (length 0) contributes a zero state."""
        states = []
        for lstm, x, n in zip(self.lstms, inputs, lengths, strict=True):
            outputs, _ = lstm(x)
            states.append(last_valid(outputs, n))  # (B, h_m)
        return self.proj(torch.cat(states, dim=1))
