"""The Memory Fusion Network (MFN) encoder that infers the discriminative factor Z_y.

Per step ``t`` (Zadeh et al., AAAI 2018):

1. every modality ``m`` updates its own recurrent cell ``(h_m, c_m)`` from ``x_m[t]``
   (``lstm``: a plain LSTM cell, as the public MFN code; ``lsthm``: the gates also read
   the previous memory ``u_{t-1}``, as the MFN paper's LSTHM);
2. Delta-memory attention: ``c* = [c_{t-1}, c_t]`` over all modalities,
   ``a = softmax(MLP_a(c*))``, ``c^ = tanh(MLP_c(a * c*))``;
3. multi-view gated memory: ``g1 = sigmoid(MLP_1([a * c*, u]))``,
   ``g2 = sigmoid(MLP_2([a * c*, u]))``, ``u_t = g1 * u_{t-1} + g2 * c^``.

The output is the final ``[h_1 .. h_M, u_T]``.

Reference formulation (:meth:`MemoryFusionNetwork.reference_forward`). All modalities'
cells are one LSTM over the concatenated state ``h = [h_1 .. h_M]`` (size
``H = sum h_m``): input projections of every step are computed before the time loop; the
recurrent weight is the block-diagonal matrix of the per-modality recurrent weights
(assembled once per forward, so no cross-modality weight exists or receives a gradient);
every operation of every step is recorded by autograd.

Fast path (``cell = "lstm"``, the default; ``model.fast_recurrence``). With plain LSTM
cells the memory ``u`` never feeds back into the cells, and the attention, ``a * c*`` and
the candidate ``c^`` depend only on ``(c_{t-1}, c_t)``. So the fast forward runs in three
stages:

1. all cells over the whole sequence in one scan (:func:`mfm.model.recurrent.lstm_scan`:
   a time loop outside autograd, each cell's own recurrent block, a hand-written
   backward), giving ``h_t`` and ``c_t`` for every step;
2. the attention MLP, ``a * c*``, the candidate MLP and the ``a * c*`` part of the gate
   MLPs' first layer for all rows at once;
3. the gated memory alone (:func:`mfm.model.recurrent.memory_scan`): per step only
   ``relu(pre_t + u W_u^T)``, the gate output layers and the update of ``u``.

Rows are *packed* (:class:`mfm.model.recurrent.Packing`): a sample's steps after the last
one where any modality is real only carry its state, so on CPU they are skipped (the input
projections included); on other devices every step runs and the masks carry the state,
which needs no host synchronisation.

This is the same computation as the per-step loop (kept as the reference and used for
``cell = "lsthm"``, where the cells read ``u``); outputs and gradients agree to rounding
(``tests/test_fast_mfn.py``). Only dropout draws its masks differently: the reference
draws a fresh mask per step inside the loop, the fast path draws the masks of all steps
at once (same distribution, other random numbers), so with dropout on the two paths give
different samples of the same random function.

Padding. The MFN reads an *aligned view*: ``M`` sequences of the same length ``S`` and a
``(B, S, M)`` mask. Where a modality's step is masked its ``(h_m, c_m)`` is carried over
unchanged; where all modalities are masked the memory is carried over too. So padded
steps change nothing. How the view is built from the inputs is
:func:`aligned_view`'s business.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from mfm.data.batch import step_mask
from mfm.model.dropout import Dropout, dropout_keep
from mfm.model.recurrent import Packing, gate_major_order, lstm_scan, memory_scan, scan_rows


def resample_segments(x: Tensor, lengths: Tensor, steps: int) -> Tensor:
    """Resample each sequence's valid steps to ``steps`` segment means.

    Target step ``s`` of sample ``b`` with length ``L`` is the mean of source steps
    ``[floor(s L / S), ceil((s + 1) L / S))`` (at least one step): an average pool when
    ``L >= S``, nearest-step repetition when ``L < S``. Padding never enters a mean.

    Args:
        x: ``(B, T, d)`` right-padded features.
        lengths: ``(B,)`` valid lengths.
        steps: target length ``S``.

    Returns:
        ``(B, S, d)``; rows of samples with length 0 are zero.
    """
    b, _, d = x.shape
    cumulative = torch.cat([x.new_zeros(b, 1, d), x.cumsum(dim=1)], dim=1)  # (B, T+1, d)
    s = torch.arange(steps, device=x.device).unsqueeze(0)  # (1, S)
    n = lengths.unsqueeze(1)  # (B, 1)
    start = torch.div(s * n, steps, rounding_mode="floor")
    end = torch.div((s + 1) * n + steps - 1, steps, rounding_mode="floor")
    end = torch.maximum(end, start + 1).clamp(max=x.shape[1])
    start = torch.minimum(start, end - 1)

    def take(index: Tensor) -> Tensor:
        return cumulative.gather(1, index.unsqueeze(-1).expand(-1, -1, d))

    means = (take(end) - take(start)) / (end - start).unsqueeze(-1).to(x.dtype)
    return means * (n > 0).unsqueeze(-1).to(x.dtype)


def aligned_view(
    inputs: Sequence[Tensor], lengths: Sequence[Tensor], mode: str, steps: int
) -> tuple[list[Tensor], Tensor]:
    """Build the MFN's aligned view of the modalities.

    Rules:

    * ``aligned``: every modality must have the same padded length ``T``; step ``t`` of
      each is read at MFN step ``t``; a modality's step is active when ``t < L_m``.
    * ``resample``: each sample's valid steps of every modality are averaged into
      ``steps`` segments (:func:`resample_segments`); a modality is active at every MFN
      step when its length is positive.
    * ``auto``: ``aligned`` when all padded lengths agree, else ``resample``.

    Args:
        inputs: ``M`` tensors ``(B, T_m, d_m)``, right-padded.
        lengths: ``M`` tensors ``(B,)``.
        mode: ``auto``, ``aligned`` or ``resample``.
        steps: the common length of ``resample``.

    Returns:
        The ``M`` aligned tensors ``(B, S, d_m)`` and the ``(B, S, M)`` bool step mask.
    """
    padded = {int(x.shape[1]) for x in inputs}
    if mode == "auto":
        mode = "aligned" if len(padded) == 1 else "resample"
    if mode == "aligned":
        if len(padded) != 1:
            raise ValueError(
                "alignment 'aligned' needs every modality to have the same number of steps, "
                f"found {sorted(padded)}; use alignment 'resample' (or 'auto')"
            )
        t = padded.pop()
        mask = torch.stack([step_mask(n, t) for n in lengths], dim=-1)
        return list(inputs), mask
    if mode != "resample":
        raise ValueError(f"unknown alignment {mode!r} (expected auto, aligned or resample)")
    views = [resample_segments(x, n, steps) for x, n in zip(inputs, lengths, strict=True)]
    present = torch.stack([n > 0 for n in lengths], dim=-1)  # (B, M)
    mask = present.unsqueeze(1).expand(-1, steps, -1)
    return views, mask


def _mlp(in_size: int, hidden: int, out_size: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(in_size, hidden), nn.ReLU(), Dropout(dropout), nn.Linear(hidden, out_size)
    )


class MemoryFusionNetwork(nn.Module):
    """MFN over ``M`` aligned modalities with batched per-step work.

    Args:
        input_sizes: features per step of each modality, in order.
        hidden_sizes: cell size of each modality, in the same order.
        memory: size of the gated memory ``u``.
        attention_hidden: width of the attention MLPs.
        attention_dropout: dropout inside them.
        gate_hidden: width of the two gate MLPs.
        gate_dropout: dropout inside them.
        cell: ``lstm`` or ``lsthm``.
        fast: use the staged fast forward for ``lstm`` cells (see the module docstring);
            False: always the reference per-step loop.
        native: let the fast forward's scans run their time loops with the C++ kernels of
            :mod:`mfm.model.native` (the same results; see
            :func:`mfm.model.recurrent.lstm_scan`).
    """

    def __init__(
        self,
        input_sizes: Sequence[int],
        hidden_sizes: Sequence[int],
        memory: int,
        attention_hidden: int,
        attention_dropout: float,
        gate_hidden: int,
        gate_dropout: float,
        cell: str = "lstm",
        fast: bool = True,
        native: bool = True,
    ) -> None:
        super().__init__()
        if len(input_sizes) != len(hidden_sizes) or not input_sizes:
            raise ValueError("need one hidden size per modality and at least one modality")
        if cell not in ("lstm", "lsthm"):
            raise ValueError(f"unknown cell {cell!r} (expected lstm or lsthm)")
        self.hidden_sizes = [int(h) for h in hidden_sizes]
        total = sum(self.hidden_sizes)
        self.total_hidden = total
        self.memory_size = memory
        self.cell = cell
        self.fast = fast
        self.native = native
        # Input weights: one Linear per modality producing its four gates [i, f, g, o].
        self.input_proj = nn.ModuleList(
            nn.Linear(d, 4 * h) for d, h in zip(input_sizes, self.hidden_sizes, strict=True)
        )
        # Recurrent weights per modality, stored as (4, h_m, h_m): gate, from, to.
        self.recurrent = nn.ParameterList(
            nn.Parameter(torch.empty(4, h, h)) for h in self.hidden_sizes
        )
        self.memory_proj = nn.Linear(memory, 4 * total, bias=False) if cell == "lsthm" else None
        self.attention = _mlp(2 * total, attention_hidden, 2 * total, attention_dropout)
        self.candidate = _mlp(2 * total, attention_hidden, memory, attention_dropout)
        self.gates_in = nn.Linear(2 * total + memory, 2 * gate_hidden)
        self.gates_drop = Dropout(gate_dropout)
        self.gate1_out = nn.Linear(gate_hidden, memory)
        self.gate2_out = nn.Linear(gate_hidden, memory)
        self.gate_hidden = gate_hidden
        # Index tensors of the fast path, kept on the module's device (no host copies per
        # step): the modality of each cell unit, and the scan's gate-major column order.
        self.register_buffer("unit_modality", torch.repeat_interleave(
            torch.arange(len(self.hidden_sizes)), torch.tensor(self.hidden_sizes)),
            persistent=False)
        self._orders: dict[tuple[tuple[int, ...], str], Tensor] = {}  # see _order
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise recurrent weights like ``nn.LSTM`` (uniform in +-1/sqrt(h))."""
        for weight, h in zip(self.recurrent, self.hidden_sizes, strict=True):
            bound = 1.0 / h**0.5
            nn.init.uniform_(weight, -bound, bound)

    @property
    def output_size(self) -> int:
        """Size of the final state ``[h_1 .. h_M, u]``."""
        return self.total_hidden + self.memory_size

    def _gate_major(self, per_modality: Sequence[Tensor]) -> Tensor:
        """Reorder ``M`` tensors ``(..., 4 h_m)`` into one ``(..., 4 H)`` in gate-major order.

        Column block ``g`` (one of i, f, g, o) holds that gate of every modality, in
        modality order, so the gate slices line up with ``h = [h_1 .. h_M]``.
        """
        split = [p.unflatten(-1, (4, -1)) for p in per_modality]  # (..., 4, h_m)
        return torch.cat(split, dim=-1).flatten(-2)

    def recurrent_matrix(self) -> Tensor:
        """The ``(H, 4 H)`` block-diagonal recurrent weight in gate-major column order
        (``nn.LSTM``'s ``[i, f, g, o]``; the reference loop's layout)."""
        blocks = [torch.block_diag(*[w[g] for w in self.recurrent]) for g in range(4)]
        return torch.stack(blocks, dim=1).flatten(1)  # (H, 4, H) -> (H, 4H)

    def cell_parts(self, packed: Sequence[Tensor]) -> list[Tensor]:
        """Input parts of the gates for :func:`lstm_scan`: ``M`` packed ``(N, d_m)`` inputs
        -> ``M`` tensors ``(N, 4 h_m)``, columns in scan gate order
        (:data:`mfm.model.recurrent.SCAN_GATES`)."""
        return [F.linear(x, scan_rows(proj.weight), scan_rows(proj.bias))
                for proj, x in zip(self.input_proj, packed, strict=True)]

    def _order(self, sizes: Sequence[int], device: torch.device) -> Tensor:
        """:func:`gate_major_order` of ``sizes`` on ``device``, built once per layout."""
        key = (tuple(sizes), str(device))
        order = self._orders.get(key)
        if order is None:
            order = self._orders[key] = gate_major_order(sizes).to(device)
        return order

    def forward(self, inputs: Sequence[Tensor], mask: Tensor, fast: bool | None = None
                ) -> Tensor:
        """Run the MFN over an aligned view.

        Args:
            inputs: ``M`` tensors ``(B, S, d_m)``.
            mask: ``(B, S, M)`` bool, True where modality ``m``'s step is real (any
                pattern: a masked step carries the cell's state over).
            fast: override ``self.fast`` (None: keep it). The fast path applies to
                ``lstm`` cells; ``lsthm`` always runs the reference loop.

        Returns:
            ``(B, H + memory)``: the final ``[h_1 .. h_M, u]``.
        """
        if (self.fast if fast is None else fast) and self.memory_proj is None:
            return self.fast_forward(inputs, mask)
        return self.reference_forward(inputs, mask)

    def fast_forward(self, inputs: Sequence[Tensor], mask: Tensor, pack: bool | None = None
                     ) -> Tensor:
        """The staged forward of ``lstm`` cells (module docstring); same shapes as forward.

        Rows run in the layout of :class:`mfm.model.recurrent.Packing`: a sample's steps
        after the last one where any modality is real change nothing and are skipped
        (``pack``; None: on CPU, where reading the ends on the host costs nothing).
        Values at masked steps must be finite.
        """
        if self.memory_proj is not None:
            raise ValueError("the fast MFN path needs cell 'lstm' (lsthm cells read u)")
        batch, steps = mask.shape[0], mask.shape[1]
        if steps == 0 or batch == 0:
            return torch.zeros(batch, self.output_size, dtype=inputs[0].dtype,
                               device=mask.device)
        any_step = mask.any(dim=2)  # (B, S)
        time = torch.arange(1, steps + 1, device=mask.device)
        plan = Packing.build((any_step * time).amax(dim=1), steps, pack)  # ends: last real + 1
        state, _ = self.scan(plan, [plan.pack(x) for x in inputs], plan.pack(mask))
        return plan.unsort(state)

    def scan(self, plan: Packing, packed: Sequence[Tensor], valid: Tensor,
             riders: Sequence[tuple[Tensor, Tensor, int]] = ()) -> tuple[Tensor, list[Tensor]]:
        """The fast path's three stages over packed rows (``lstm`` cells).

        Args:
            plan: the packing; every sample's rows must end at its last real step.
            packed: ``M`` packed inputs ``(N, d_m)``, finite (zero where not real).
            valid: ``(N, M)`` bool, True where modality ``m``'s step is real.
            riders: extra LSTM cells run in the same scan (another module's weights,
                e.g. the MFM's private encoders): ``(x_part (N, 4 e) in scan gate
                order, recurrent weight (4, e, e), modality index)``; a rider's state
                is carried where its modality's step is not real. They share the
                per-step work of the MFN's cells and never enter the MFN's state.

        Returns:
            ``(B, H + memory)`` final ``[h_1 .. h_M, u]`` and each rider's final hidden
            state ``(B, e)``, all in the plan's sorted row order.
        """
        total = self.total_hidden
        dtype = packed[0].dtype
        parts = self.cell_parts(packed)
        weights = list(self.recurrent)
        sizes = list(self.hidden_sizes)
        units = [self.unit_modality]
        for part, weight, modality in riders:
            parts.append(part)
            weights.append(weight)
            sizes.append(int(weight.shape[1]))
            units.append(self.unit_modality.new_full((int(weight.shape[1]),), modality))
        active = any_active = None
        # Packed rows are within each sample's range, so with aligned lengths and every
        # modality present nothing needs masking; checking reads the host (CPU only).
        if not plan.packed or not bool(valid.all()):
            active = valid.index_select(1, torch.cat(units)).to(dtype)  # (N, H + riders)
            packed_any = valid.any(dim=1, keepdim=True)
            if not plan.packed or not bool(packed_any.all()):
                any_active = packed_any.to(dtype)  # (N, 1)
        h_out, c_out = lstm_scan(parts, weights, plan, active,
                                 perm=self._order(sizes, packed[0].device), native=self.native)
        if riders:
            c_out = c_out[:, :total]
        # c* = [c_{t-1}, c_t] of every packed row (c_{-1} = 0): (N, 2H).
        c_prev = torch.cat([c_out.new_zeros(plan.counts[0], total),
                            c_out.index_select(0, plan.prev_index)])
        c_star = torch.cat([c_prev, c_out], dim=1)
        attended = torch.softmax(self.attention(c_star), dim=1) * c_star
        candidate = torch.tanh(self.candidate(attended))  # (N, memory)
        weight = self.gates_in.weight  # (2G, 2H + memory): columns [a * c*, u]
        pre = F.linear(attended, weight[:, : 2 * total], self.gates_in.bias)  # (N, 2G)
        keep = None
        p = self.gates_drop.p
        if self.training and p > 0:
            keep = dropout_keep(pre, p)
        u = memory_scan(pre, candidate, plan, weight[:, 2 * total:],
                        (self.gate1_out.weight, self.gate1_out.bias),
                        (self.gate2_out.weight, self.gate2_out.bias), any_active, keep,
                        native=self.native)
        last = plan.last(h_out)  # (B, H + riders)
        state = torch.cat([last[:, :total], u], dim=1)
        bounds = [total]
        for size in sizes[len(self.hidden_sizes):]:
            bounds.append(bounds[-1] + size)
        return state, [last[:, a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

    def reference_forward(self, inputs: Sequence[Tensor], mask: Tensor) -> Tensor:
        """The per-step loop, every operation under autograd; same shapes as forward.

        The reference the fast path is tested against, and the path of ``lsthm`` cells.
        """
        batch, steps = mask.shape[0], mask.shape[1]
        x_gates = self._gate_major([proj(x) for proj, x in zip(self.input_proj, inputs,
                                                               strict=True)])  # (B, S, 4H)
        sizes = torch.tensor(self.hidden_sizes, device=mask.device)
        cell_mask = mask.repeat_interleave(sizes, dim=2)  # (B, S, H)
        any_mask = mask.any(dim=2, keepdim=True)  # (B, S, 1)
        weight = self.recurrent_matrix()
        total = self.total_hidden
        h = x_gates.new_zeros(batch, total)
        c = x_gates.new_zeros(batch, total)
        u = x_gates.new_zeros(batch, self.memory_size)
        # Per-step views taken once: slicing inside the loop would make autograd zero-fill
        # and accumulate a full-size gradient for every step.
        x_steps = x_gates.unbind(1)
        active_steps = cell_mask.unbind(1)
        any_steps = any_mask.unbind(1)
        for t in range(steps):
            gates = torch.addmm(x_steps[t], h, weight)
            if self.memory_proj is not None:
                gates = gates + self.memory_proj(u)
            i, f, g, o = gates.chunk(4, dim=1)
            c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h_new = torch.sigmoid(o) * torch.tanh(c_new)
            active = active_steps[t]
            c_new = torch.where(active, c_new, c)
            h_new = torch.where(active, h_new, h)
            c_star = torch.cat([c, c_new], dim=1)  # (B, 2H)
            attended = torch.softmax(self.attention(c_star), dim=1) * c_star
            candidate = torch.tanh(self.candidate(attended))
            hidden = self.gates_drop(torch.relu(self.gates_in(torch.cat([attended, u], dim=1))))
            gate1 = torch.sigmoid(self.gate1_out(hidden[:, : self.gate_hidden]))
            gate2 = torch.sigmoid(self.gate2_out(hidden[:, self.gate_hidden :]))
            u = torch.where(any_steps[t], gate1 * u + gate2 * candidate, u)
            h, c = h_new, c_new
        return torch.cat([h, u], dim=1)
