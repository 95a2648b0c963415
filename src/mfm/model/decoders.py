"""Decoders that rebuild a modality's whole sequence from its factors."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from mfm.data.batch import step_mask
from mfm.model.recurrent import Packing, gate_major_order, lstm_module_weights, lstm_scan


class SequenceDecoder(nn.Module):
    """Rebuilds a ``(B, T, d)`` sequence from a code ``[F_y, F_m]``.

    As in the original MFM code, a recurrent cell reads the same code at every step and a
    linear layer maps each hidden state to the step's features. The cell is run as one
    ``nn.LSTM`` call over the repeated code (identical to unrolling an ``LSTMCell``), so
    step ``t`` of the output never depends on how many steps follow it.

    Args:
        code_size: size of ``[F_y, F_m]``.
        hidden: LSTM hidden size.
        output_size: features per step ``d_m``.
    """

    def __init__(self, code_size: int, hidden: int, output_size: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(code_size, hidden, batch_first=True)
        self.out = nn.Linear(hidden, output_size)

    def forward(self, code: Tensor, steps: int) -> Tensor:
        """Map a ``(B, code_size)`` code to a ``(B, steps, output_size)`` sequence."""
        repeated = code.unsqueeze(1).expand(-1, steps, -1)
        hidden, _ = self.lstm(repeated)
        return self.out(hidden)


def masked_mse(x_hat: Tensor, x: Tensor, lengths: Tensor) -> Tensor:
    """Mean squared error over valid steps.

    Args:
        x_hat: ``(B, T, d)`` reconstruction.
        x: ``(B, T, d)`` right-padded target.
        lengths: ``(B,)`` valid lengths.

    Returns:
        0-d tensor: squared error summed over valid steps and features, divided by their
        count (0 when no step is valid).
    """
    weights = step_mask(lengths, x.shape[1]).unsqueeze(-1).to(x.dtype)
    count = weights.sum() * x.shape[-1]
    return ((x_hat - x) ** 2 * weights).sum() / count.clamp(min=1.0)


def squared_errors(decoders: Mapping[str, SequenceDecoder], codes: Mapping[str, Tensor],
                   targets: Mapping[str, Tensor], plan: Packing, valid: Tensor | None,
                   perm: Tensor | None = None, native: bool = True) -> dict[str, Tensor]:
    """Every decoder's summed squared error over the scored steps, in one scan.

    The same numbers as ``((decoder(code, T) - x) ** 2)`` summed over the scored steps,
    computed without building any ``(B, T, d)`` tensor: the decoders run side by side as
    the cells of one :func:`mfm.model.recurrent.lstm_scan` over packed rows (each stops
    at its last scored step), the code's input projection is computed once per sample
    instead of once per step (the code is the same at every step), and the output layer
    and the error only see the scored rows.

    Args:
        decoders: modality -> decoder, in modality order.
        codes: modality -> ``(B, code_size)`` (sample order).
        targets: modality -> ``(N, d_m)`` the target features of the packed rows; only
            scored rows are read.
        plan: the packing; each sample's rows end at its last scored step of any modality.
        valid: ``(N, K)`` bool, True where decoder ``k``'s step is scored; None when every
            packed row is scored for every decoder (the plan must then be packed).
        perm: :func:`mfm.model.recurrent.gate_major_order` of the decoders' hidden sizes
            on their device (built when omitted).
        native: let the scan use the C++ kernels of :mod:`mfm.model.native`.

    Returns:
        modality -> 0-d summed squared error.
    """
    names = list(decoders)
    weights = [lstm_module_weights(decoders[n].lstm) for n in names]
    parts = [F.linear(codes[n].index_select(0, plan.order), w_ih, bias)
             for n, (w_ih, bias, _) in zip(names, weights, strict=True)]  # (B, 4 h) each
    sizes = [int(w.shape[1]) for _, _, w in weights]
    first = next(iter(codes.values()))
    active = None
    if valid is not None:
        units = torch.repeat_interleave(
            torch.arange(len(names), device=valid.device),
            torch.tensor(sizes, device=valid.device))
        active = valid.index_select(1, units).to(first.dtype)  # (N, sum h)
    if perm is None and len(sizes) > 1:
        perm = gate_major_order(sizes).to(first.device)
    hidden, _ = lstm_scan(parts, [w for _, _, w in weights], plan, active, constant=True,
                          perm=perm, native=native)
    errors = {}
    start = 0
    for k, (name, size) in enumerate(zip(names, sizes, strict=True)):
        h = hidden[:, start:start + size]
        start += size
        target = targets[name]
        if valid is None:
            errors[name] = F.mse_loss(decoders[name].out(h), target, reduction="sum")
        elif plan.packed:  # on CPU: only the scored rows
            rows = valid[:, k].nonzero().squeeze(1)
            out = decoders[name].out(h.index_select(0, rows))
            errors[name] = F.mse_loss(out, target.index_select(0, rows), reduction="sum")
        else:  # every row runs (no host reads): mask the error
            diff = decoders[name].out(h) - target
            errors[name] = torch.where(valid[:, k:k + 1], diff, 0.0).square().sum()
    return errors
