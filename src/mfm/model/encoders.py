"""Small building blocks: the factor MLPs and the per-modality sequence encoder."""

from __future__ import annotations

from torch import Tensor, nn


class MLP(nn.Sequential):
    """``Linear -> ReLU -> Dropout -> Linear``: maps ``(B, in)`` to ``(B, out)``.

    Used for G_y (Z_y -> F_y), G_m (Z_a,m -> F_m) and the prediction head (F_y -> Y).
    """

    def __init__(self, in_size: int, hidden: int, out_size: int, dropout: float = 0.0) -> None:
        super().__init__(
            nn.Linear(in_size, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, out_size),
        )


def last_valid(outputs: Tensor, lengths: Tensor) -> Tensor:
    """Pick each sequence's output at its last valid step.

    Args:
        outputs: ``(B, T, h)`` per-step outputs of a right-padded sequence.
        lengths: ``(B,)`` valid lengths; a length of 0 gives a zero vector.

    Returns:
        ``(B, h)``.
    """
    index = (lengths.clamp(min=1) - 1).view(-1, 1, 1).expand(-1, 1, outputs.shape[2])
    last = outputs.gather(1, index).squeeze(1)
    return last * (lengths > 0).unsqueeze(1).to(last.dtype)


class SequenceEncoder(nn.Module):
    """Infers a modality-specific factor Z_a,m from one modality.

    An LSTM reads the right-padded sequence; its hidden state at the last *valid* step
    (not the last padded step) goes through a linear layer. Because the LSTM is causal and
    the padding trails, padded steps cannot change the result.

    Args:
        input_size: features per step ``d_m``.
        hidden: LSTM hidden size.
        out_size: size of the factor.
    """

    def __init__(self, input_size: int, hidden: int, out_size: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(input_size, hidden, batch_first=True)
        self.proj = nn.Linear(hidden, out_size)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        """Map ``(B, T, d)`` features and ``(B,)`` lengths to a ``(B, out_size)`` factor."""
        outputs, _ = self.lstm(x)
        return self.proj(last_valid(outputs, lengths))
