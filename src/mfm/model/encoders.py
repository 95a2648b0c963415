"""Small building blocks: the factor MLPs and the per-modality sequence encoder."""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from mfm.model.recurrent import Packing, lstm_module_weights, lstm_scan, scan_supported


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
        fast: allow running the LSTM's weights with
            :func:`mfm.model.recurrent.lstm_scan` (the same computation: the input
            projection as one product over the valid steps only, a hand-written backward
            without an input gradient). It is used when the input is wide
            (``input_size >= 4 * hidden``), where ``nn.LSTM``'s fused backward is slow on
            CPU; for narrow inputs the fused ``nn.LSTM`` is faster and is kept.
        native: let that scan use the C++ kernels of :mod:`mfm.model.native`.
    """

    def __init__(self, input_size: int, hidden: int, out_size: int, fast: bool = True,
                 native: bool = True) -> None:
        super().__init__()
        self.lstm = nn.LSTM(input_size, hidden, batch_first=True)
        self.proj = nn.Linear(hidden, out_size)
        self.fast = fast and input_size >= 4 * hidden
        self.native = native

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        """Map ``(B, T, d)`` features and ``(B,)`` lengths to a ``(B, out_size)`` factor."""
        if self.fast and scan_supported(self.lstm):
            # Rows stop at their length (packed on CPU); the state after each row's last
            # valid step is the same as last_valid's.
            plan = Packing.build(lengths.clamp(min=0, max=x.shape[1]), x.shape[1])
            w_ih, bias, w_hh = lstm_module_weights(self.lstm)
            h_out, _ = lstm_scan(F.linear(plan.pack(x), w_ih, bias), [w_hh], plan,
                                 native=self.native)
            return self.proj(plan.unsort(plan.last(h_out)))
        outputs, _ = self.lstm(x)
        return self.proj(last_valid(outputs, lengths))
