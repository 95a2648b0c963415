"""Decoders that rebuild a modality's whole sequence from its factors."""

from __future__ import annotations

from torch import Tensor, nn


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
