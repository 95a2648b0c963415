"""Recurrent scans with hand-written backward passes (LSTM cells and the MFN's gated memory).

Why. On CPU a recurrence written as per-step autograd operations pays for a graph node
per operation and step and accumulates each weight gradient with one small matrix product
per step; the fused ``nn.LSTM`` (oneDNN) cannot return the cell states the MFN needs, and
its backward is slow when the input is wide (it always computes the input gradient; about
2x slower than :func:`lstm_scan` for 768 -> 64 on the machines measured, while for narrow
inputs it is faster and is kept). The scans below run the time loop without autograd in
``forward``, keep what the backward needs, and in ``backward`` run the reverse loop with
only the state-to-state products per step; every weight gradient is then one matrix
product over all rows.

The arithmetic is the textbook LSTM cell and the MFN's gated memory, so outputs and
gradients equal those of the per-step autograd formulation up to floating-point rounding
(``tests/test_fast_mfn.py`` checks both in float64).

Packed layout (:class:`Packing`). A sequence whose steps have all ended (every later step
is masked) only carries its state, so its rows need no work. Rows are sorted by their end
(longest first) and stored time-major: step ``t`` holds the ``n_t`` rows still running,
contiguous, as in ``torch.nn.utils.rnn.PackedSequence``; a step then costs ``n_t`` rows of
arithmetic instead of ``B``. Deciding ``n_t`` reads the ends on the host, which is free on
CPU (where the work is compute-bound) but would synchronise an accelerator, so elsewhere
the plan keeps every row at every step (``n_t = B``) and the masks do the carrying.

Layouts. ``H = sum h_m`` over ``M`` independent cells that run side by side (the MFN's
modalities; ``M = 1`` for a plain LSTM). A cell's gate pre-activations are its ``4 h_m``
columns in :data:`SCAN_GATES` order ``[o, i, f, g]``; inputs hold the cells one after the
other (*cell-major*, see :class:`_Cells`). Cell ``m``'s recurrent weight is a
``(4, h_m, h_m)`` tensor indexed (gate in ``nn.LSTM`` order, from, to):
``gates_g += h_m @ w[g]``.

Time loops. Each scan's loop runs either in Python (a few whole-tensor operations per
step, below) or, on CPU in float32/float64, in the C++ kernels of :mod:`mfm.model.native`
(the same arithmetic; each step's gate nonlinearities and state update fused into one
pass, the cells split across threads), chosen by the ``native`` argument of
:func:`lstm_scan` and :func:`memory_scan` (``model.native_kernels``). The Python loops
keep gate pre-activations in gate-major order, the kernels in cell-major order; a scan's
backward uses the layout its forward wrote. ``tests/test_native.py`` holds the two equal.

Masks are multiplied in (``new * a + old * (1 - a)`` with ``a`` in {0, 1}), which is exact
for finite values and much faster on CPU than ``torch.where`` with a full boolean
condition; values at masked steps must therefore be finite (the MFM zeroes padding).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from mfm.model import native as _native

SCAN_GATES = (3, 0, 1, 2)
"""Scan gate order: position ``k`` of a cell's gates holds ``nn.LSTM`` gate
``SCAN_GATES[k]``, i.e. ``[o, i, f, g]``: the three sigmoid gates are contiguous."""
_FROM_SCAN = (1, 2, 3, 0)  # nn.LSTM gate j sits at scan position _FROM_SCAN[j]


def scan_rows(weight: Tensor) -> Tensor:
    """Reorder the ``4 h`` rows of an ``nn.LSTM``-ordered input weight or bias
    (``[i, f, g, o]`` blocks) into scan gate order."""
    # Concatenated slices, not an index: the gradient is then a copy back into blocks
    # instead of an index_put (about 1 ms per step for a 768-wide input on CPU).
    blocks = weight.chunk(4, dim=0)
    return torch.cat([blocks[k] for k in SCAN_GATES])


@dataclass
class Packing:
    """Which rows run at which step, and where they are stored (see the module docstring).

    Attributes:
        batch: ``B``.
        steps: ``S``.
        order: ``(B,)`` sorted position -> sample (longest first); the identity when
            unpacked.
        inverse: ``(B,)`` sample -> sorted position.
        counts: ``n_t`` per step (non-increasing).
        offsets: first packed row of each step (``offsets[t + 1] = offsets[t] + n_t``).
        index: ``(N,)`` the flat batch-first position ``b * S + t`` of each packed row.
        position: ``(N,)`` the sorted position ``r`` of each packed row's sample
            (``order[position]`` is the sample).
        time: ``(N,)`` the step ``t`` of each packed row.
        prev_index: ``(N - n_0,)`` for the packed rows of steps ``t >= 1``, in order, the
            packed row of the same sample at step ``t - 1``.
        last_index: ``(B,)`` packed row of each sorted row's last step (0 for rows that
            never run).
        ran: ``(B, 1)`` 1 for sorted rows that run at least one step, else 0.
        packed: whether ended rows are skipped (else ``n_t = B`` at every step).
    """

    batch: int
    steps: int
    order: Tensor
    inverse: Tensor
    counts: list[int]
    offsets: list[int]
    index: Tensor
    position: Tensor
    time: Tensor
    prev_index: Tensor
    last_index: Tensor
    ran: Tensor
    packed: bool

    @property
    def rows(self) -> int:
        """``N``, the number of packed rows."""
        return self.offsets[-1]

    @classmethod
    def build(cls, ends: Tensor, steps: int, pack: bool | None = None) -> Packing:
        """Plan a scan whose row ``b`` only changes its state at steps ``t < ends[b]``.

        Args:
            ends: ``(B,)`` integer ends in ``[0, S]``.
            steps: ``S``.
            pack: skip ended rows (reads ``ends`` on the host); None: on CPU only.
        """
        device = ends.device
        batch = int(ends.shape[0])
        if pack is None:
            pack = device.type == "cpu"
        ends = ends.long()
        if pack:
            order = torch.sort(ends, descending=True, stable=True).indices
            sorted_ends = ends[order]
            per_row = sorted_ends.tolist()
            counts = [0] * steps
            for t in range(steps):  # rows are sorted: n_t = number of ends > t
                lo, hi = 0, batch
                while lo < hi:
                    mid = (lo + hi) // 2
                    if per_row[mid] > t:
                        lo = mid + 1
                    else:
                        hi = mid
                counts[t] = lo
        else:
            order = torch.arange(batch, device=device)
            sorted_ends = ends
            counts = [batch] * steps
        offsets = [0]
        for n in counts:
            offsets.append(offsets[-1] + n)
        if pack:
            # Packed rows in time-major order: the first n_t sorted rows at each step t.
            alive = torch.arange(batch, device=device).unsqueeze(0) < torch.tensor(
                counts, device=device, dtype=torch.long).unsqueeze(1)  # (S, B)
            t_idx, r_idx = alive.nonzero(as_tuple=True)
            start = torch.tensor(offsets[:-1], device=device, dtype=torch.long)
        else:  # every row at every step; built on the device, nothing read on the host
            t_idx = torch.arange(steps, device=device).repeat_interleave(batch)
            r_idx = torch.arange(batch, device=device).repeat(steps)
            start = torch.arange(steps, device=device) * batch
        index = order[r_idx] * steps + t_idx
        later = slice(counts[0] if steps else 0, None)
        prev_index = start[t_idx[later] - 1] + r_idx[later]
        last_step = (sorted_ends - 1).clamp(min=0, max=max(steps - 1, 0))
        if steps:
            # Rows that never run point at row 0 (their value is masked out by ``ran``).
            last_index = torch.where(sorted_ends > 0,
                                     start[last_step] + torch.arange(batch, device=device), 0)
        else:
            last_index = torch.zeros(batch, dtype=torch.long, device=device)
        ran = (sorted_ends > 0).unsqueeze(1)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(batch, device=device)
        return cls(batch, steps, order, inverse, counts, offsets, index, r_idx, t_idx,
                   prev_index, last_index, ran, pack)

    def pack(self, x: Tensor) -> Tensor:
        """``(B, S, ...)`` batch-first -> ``(N, ...)`` packed rows."""
        return x.reshape(self.batch * self.steps, *x.shape[2:]).index_select(0, self.index)

    def unpack(self, packed: Tensor, fill: float = 0.0) -> Tensor:
        """``(N, ...)`` packed rows -> ``(B, S, ...)`` batch-first, ``fill`` where no row ran."""
        out = packed.new_full((self.batch * self.steps, *packed.shape[1:]), fill)
        out = out.index_copy(0, self.index, packed)
        return out.view(self.batch, self.steps, *packed.shape[1:])

    def last(self, packed: Tensor) -> Tensor:
        """Each sorted row's value at its last step, ``(B, ...)`` (zero for rows that never
        ran), from ``(N, ...)`` packed per-step values."""
        if self.rows == 0:
            return packed.new_zeros(self.batch, *packed.shape[1:])
        picked = packed.index_select(0, self.last_index)
        return picked * self.ran.view(-1, *([1] * (picked.dim() - 1))).to(picked.dtype)

    def unsort(self, rows: Tensor) -> Tensor:
        """``(B, ...)`` in sorted order -> sample order."""
        return rows.index_select(0, self.inverse)


def _dense(x: Tensor | None) -> Tensor | None:
    """``x`` contiguous (what the native kernels read), or None."""
    return None if x is None else x.contiguous()


# ----------------------------------------------------------------------------- loops
# The time loops read and write preallocated packed buffers in place. (Compiling them with
# TorchScript was measured 2-6 % faster on CPU, within noise, and TorchScript is deprecated;
# torch.compile of the step was slower. Both are left out.)


def gate_major_order(sizes: Sequence[int]) -> Tensor:
    """``(4 H,)`` long: for each gate-major column (gate, then cell, then unit), the
    cell-major column that holds it (see :class:`_Cells`). Modules keep it as a buffer so
    that it lives on their device."""
    offsets = [0]
    for h in sizes:
        offsets.append(offsets[-1] + h)
    return torch.tensor([4 * offsets[m] + k * h + j for k in range(4)
                         for m, h in enumerate(sizes) for j in range(h)], dtype=torch.long)


class _Cells:
    """The per-cell blocks of a scan's ``M`` cells.

    ``x_gates`` and the stored gate gradients are *cell-major*: cell ``m`` owns the
    contiguous columns ``[4 off_m, 4 off_m + 4 h_m)`` in scan gate order. The per-step
    elementwise work runs on a *gate-major* copy (``perm`` reorders cell-major columns into
    gate-major ones, ``inverse`` back), so that it is a few operations for all cells
    together, while the recurrent products use each cell's own ``(h_m, 4 h_m)`` block: no
    product with the zeros between cells.
    """

    def __init__(self, weights: Sequence[Tensor], perm: Tensor | None = None) -> None:
        self.sizes = [int(w.shape[1]) for w in weights]
        self.total = sum(self.sizes)
        offsets = [0]
        for h in self.sizes:
            offsets.append(offsets[-1] + h)
        self.hidden = [slice(offsets[m], offsets[m + 1]) for m in range(len(self.sizes))]
        self.gates = [slice(4 * offsets[m], 4 * offsets[m + 1]) for m in range(len(self.sizes))]
        with torch.no_grad():
            # (h, 4h) per cell, columns in scan gate order: gates_m = h_m @ u_m.
            self.u = [w[list(SCAN_GATES)].permute(1, 0, 2).reshape(w.shape[1], -1).contiguous()
                      for w in weights]
        self.single = len(self.sizes) == 1
        if not self.single:
            device = weights[0].device
            self.perm = (gate_major_order(self.sizes).to(device) if perm is None
                         else perm.to(device))
            self.inverse = torch.empty_like(self.perm)
            self.inverse[self.perm] = torch.arange(self.perm.shape[0], device=device)

    def gates_of(self, parts: Sequence[Tensor], h_prev: Tensor, scratch: Tensor,
                 out: Tensor) -> Tensor:
        """Gate pre-activations ``x + h_prev @ U`` of ``n`` rows, gate-major, into ``out``
        (``parts``: each cell's ``(n, 4 h_m)`` input part; ``scratch`` an ``(n, 4H)``
        buffer)."""
        if self.single:
            return torch.addmm(parts[0], h_prev, self.u[0], out=out)
        for x, hs, gs, u in zip(parts, self.hidden, self.gates, self.u, strict=True):
            torch.addmm(x, h_prev[:, hs], u, out=scratch[:, gs])
        return torch.index_select(scratch, 1, self.perm, out=out)

    def grad_state(self, d_gates: Tensor, carry: Tensor | None, d_cells: Tensor,
                   dh: Tensor) -> None:
        """``dh = d_gates @ U^T (+ carry)`` for ``n`` rows; ``d_gates`` gate-major, copied
        cell-major into ``d_cells``."""
        if self.single:
            d_cells.copy_(d_gates)
        else:
            torch.index_select(d_gates, 1, self.inverse, out=d_cells)
        for hs, gs, u in zip(self.hidden, self.gates, self.u, strict=True):
            if carry is None:
                torch.mm(d_cells[:, gs], u.t(), out=dh[:, hs])
            else:
                torch.addmm(carry[:, hs], d_cells[:, gs], u.t(), out=dh[:, hs])


def _tanh_(x: Tensor) -> Tensor:
    """``tanh`` in place as ``2 sigmoid(2 x) - 1``: the same function (within one float
    rounding of 1), about 2.5x faster on CPU, where ``torch.tanh`` costs ~3 ns per element
    against ~0.5 for ``torch.sigmoid``."""
    return x.mul_(2).sigmoid_().mul_(2).sub_(1)


def _lstm_forward_loop(parts: Sequence[Tensor], cells: _Cells, counts: list[int],
                       offsets: list[int], active: Tensor | None, constant: bool,
                       h_out: Tensor, c_out: Tensor, tanh_out: Tensor,
                       gates_out: Tensor) -> None:
    total = cells.total
    three = 3 * total
    zeros = h_out.new_zeros(counts[0] if counts else 0, total)
    scratch = h_out.new_empty(counts[0] if counts else 0, 4 * total)
    for t in range(len(counts)):
        n = counts[t]
        if n == 0:
            break
        o = offsets[t]
        if t == 0:
            h_prev = zeros[:n]
            c_prev = zeros[:n]
        else:
            p = offsets[t - 1]
            h_prev = h_out[p:p + n]
            c_prev = c_out[p:p + n]
        xt = [x[:n] for x in parts] if constant else [x[o:o + n] for x in parts]
        gates = cells.gates_of(xt, h_prev, scratch[:n], gates_out[o:o + n])  # [o, i, f, g]
        gates[:, :three].sigmoid_()
        _tanh_(gates[:, three:])
        og = gates[:, :total]
        ig = gates[:, total:2 * total]
        fg = gates[:, 2 * total:three]
        gg = gates[:, three:]
        tc = tanh_out[o:o + n]
        if active is None:
            c = torch.addcmul(ig * gg, fg, c_prev, out=c_out[o:o + n])
            _tanh_(tc.copy_(c))
            torch.mul(og, tc, out=h_out[o:o + n])
        else:
            a = active[o:o + n]
            c_new = torch.addcmul(ig * gg, fg, c_prev)
            h_new = _tanh_(c_new.clone()).mul_(og)
            # new where a == 1, previous where a == 0 (exact for finite values)
            c = torch.addcmul(c_prev - c_prev * a, c_new, a, out=c_out[o:o + n])
            _tanh_(tc.copy_(c))
            torch.addcmul(h_prev - h_prev * a, h_new, a, out=h_out[o:o + n])


def _lstm_backward_factors(gates: Tensor, c_out: Tensor, tanh_out: Tensor, first: int,
                           prev_index: Tensor) -> tuple[Tensor, Tensor]:
    """What the backward loop multiplies by, for all rows at once (outside the loop).

    With post-activation gates ``o, i, f, g``, ``tc = tanh(c)`` and ``c_prev``:
    ``dc = dc_in + dh * o (1 - tc^2)`` and the gate pre-activation gradients are
    ``[dh * tc o (1 - o), dc * g i (1 - i), dc * c_prev f (1 - f), dc * i (1 - g^2)]``.

    Returns:
        ``a = o (1 - tc^2)`` ``(N, H)`` and the four factors ``(N, 4 H)`` gate-major.
    """
    total = tanh_out.shape[1]
    o = gates[:, :total]
    i = gates[:, total:2 * total]
    g = gates[:, 3 * total:]
    sig = gates[:, :3 * total]
    factors = torch.empty_like(gates)  # written block by block: no concatenation
    torch.mul(sig, sig, out=factors[:, :3 * total]).neg_().add_(sig)  # s (1 - s): o, i, f
    torch.mul(g, g, out=factors[:, 3 * total:]).neg_().add_(1).mul_(i)  # i (1 - g^2)
    factors[:, :total].mul_(tanh_out)
    factors[:, total:2 * total].mul_(g)
    c_prev = factors.new_zeros(c_out.shape)
    if c_out.shape[0] > first:
        c_prev[first:] = c_out.index_select(0, prev_index)
    factors[:, 2 * total:3 * total].mul_(c_prev)
    a = torch.mul(tanh_out, tanh_out).neg_().add_(1).mul_(o)
    return a, factors


def _lstm_backward_loop(grad_h: Tensor | None, grad_c: Tensor | None, cells: _Cells,
                        counts: list[int], offsets: list[int], active: Tensor | None,
                        gates: Tensor, a_all: Tensor, factors: Tensor, d_cells: Tensor,
                        dh: Tensor, dc: Tensor) -> None:
    total = cells.total
    three = 3 * total
    d_gates = gates.new_empty(counts[0] if counts else 0, 4 * total)
    for t in range(len(counts) - 1, -1, -1):
        n = counts[t]
        if n == 0:
            continue
        o = offsets[t]
        dh_t = dh[:n]
        dc_t = dc[:n]
        if grad_h is not None:
            dh_t = dh_t + grad_h[o:o + n]
        if grad_c is not None:
            dc_t = dc_t + grad_c[o:o + n]
        if active is not None:
            a = active[o:o + n]
            dh_new = dh_t * a
            dc_in = dc_t * a
        else:
            dh_new = dh_t
            dc_in = dc_t
        # Where a step is masked every term below is multiplied by dh_new = dc_in = 0.
        dcn = torch.addcmul(dc_in, dh_new, a_all[o:o + n])
        dg = d_gates[:n]
        f_t = factors[o:o + n]
        torch.mul(dh_new, f_t[:, :total], out=dg[:, :total])
        torch.mul(dcn.unsqueeze(1), f_t[:, total:].view(n, 3, total),
                  out=dg[:, total:].view(n, 3, total))
        fg = gates[o:o + n, 2 * total:three]
        if active is not None:
            dc[:n] = torch.addcmul(dc_t - dc_in, dcn, fg)
            carry = dh_t - dh_new
        else:
            torch.mul(dcn, fg, out=dc[:n])
            carry = None
        cells.grad_state(dg, carry, d_cells[o:o + n], dh[:n])


def _memory_forward_loop(pre: Tensor, candidate: Tensor, w_u_t: Tensor, w_out: Tensor,
                         b_out: Tensor, counts: list[int], offsets: list[int],
                         any_active: Tensor | None, keep: Tensor | None, u_out: Tensor,
                         hidden_out: Tensor, sig_out: Tensor, zeros: Tensor) -> None:
    memory = candidate.shape[1]
    for t in range(len(counts)):
        n = counts[t]
        if n == 0:
            break
        o = offsets[t]
        if t == 0:
            u_prev = zeros[:n]
        else:
            p = offsets[t - 1]
            u_prev = u_out[p:p + n]
        hidden = torch.addmm(pre[o:o + n], u_prev, w_u_t, out=hidden_out[o:o + n]).relu_()
        if keep is not None:
            hidden.mul_(keep[o:o + n])
        sig = torch.addmm(b_out, hidden, w_out, out=sig_out[o:o + n]).sigmoid_()
        g1 = sig[:, :memory]
        g2 = sig[:, memory:]
        if any_active is None:
            torch.addcmul(g1 * u_prev, g2, candidate[o:o + n], out=u_out[o:o + n])
        else:
            a = any_active[o:o + n]
            u_new = torch.addcmul(g1 * u_prev, g2, candidate[o:o + n])
            torch.addcmul(u_prev - u_prev * a, u_new, a, out=u_out[o:o + n])


def _memory_backward_loop(grad_last: Tensor, counts: list[int], offsets: list[int],
                          any_active: Tensor | None, g1_all: Tensor, p_y: Tensor,
                          relu_mask: Tensor, w_out_t: Tensor, w_u: Tensor, d_new: Tensor,
                          d_sig: Tensor, d_pre: Tensor, du: Tensor) -> None:
    memory = g1_all.shape[1]
    for t in range(len(counts) - 1, -1, -1):
        n = counts[t]
        if n == 0:
            continue
        o = offsets[t]
        du_t = du[:n] + grad_last[o:o + n]
        if any_active is not None:
            du_new = torch.mul(du_t, any_active[o:o + n], out=d_new[o:o + n])
        else:
            du_new = d_new[o:o + n]
            du_new.copy_(du_t)
        dy = torch.mul(p_y[o:o + n].view(n, 2, memory), du_new.unsqueeze(1),
                       out=d_sig[o:o + n].view(n, 2, memory)).view(n, 2 * memory)
        d_hidden = torch.mm(dy, w_out_t, out=d_pre[o:o + n]).mul_(relu_mask[o:o + n])
        base = du_new * g1_all[o:o + n]
        if any_active is not None:
            base = base + (du_t - du_new)
        du[:n] = torch.addmm(base, d_hidden, w_u)


# ----------------------------------------------------------------------------- LSTM scan


class _LSTMScan(torch.autograd.Function):
    """See :func:`lstm_scan`."""

    @staticmethod
    def forward(ctx: FunctionCtx, active: Tensor | None, plan: Packing, store: bool,
                constant: bool, perm: Tensor | None, native: bool, num_parts: int,
                *tensors: Tensor) -> tuple[Tensor, Tensor]:
        parts, weights = tensors[:num_parts], tensors[num_parts:]
        cells = _Cells(weights, perm)
        total = cells.total
        rows = plan.rows
        h_out = parts[0].new_empty(rows, total)
        c_out = parts[0].new_empty(rows, total)
        tanh_out = parts[0].new_empty(rows, total)
        gates = parts[0].new_empty(rows, 4 * total)  # gate-major (Python) or cell-major
        if num_parts == 1 and not cells.single:  # one cell-major tensor for all cells
            parts = tuple(parts[0][:, gs] for gs in cells.gates)
        parts = [x.detach() for x in parts]
        if native:
            torch.ops.mfm_scan.lstm_forward(
                [x if x.stride(1) == 1 else x.contiguous() for x in parts], cells.u,
                plan.counts, plan.offsets, _dense(active), constant, h_out, c_out, tanh_out,
                gates)
        else:
            _lstm_forward_loop(parts, cells, plan.counts, plan.offsets, active, constant,
                               h_out, c_out, tanh_out, gates)
        if store:
            ctx.save_for_backward(gates, c_out, tanh_out, h_out, active, *weights)
        ctx.plan = plan
        ctx.cells = cells
        ctx.constant = constant
        ctx.native = native
        ctx.num_parts = num_parts
        # An output nothing reads (often c) gets None as gradient, not a tensor of zeros.
        ctx.set_materialize_grads(False)
        return h_out, c_out

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_h: Tensor | None, grad_c: Tensor | None
                 ) -> tuple[Tensor | None, ...]:
        gates, c_out, tanh_out, h_out, active, *weights = ctx.saved_tensors
        plan: Packing = ctx.plan
        cells: _Cells = ctx.cells
        num_parts: int = ctx.num_parts
        total = cells.total
        rows = plan.rows
        first = plan.counts[0] if plan.steps else 0
        d_cells = gates.new_empty(rows, 4 * total)  # cell-major, like the input parts
        dh = h_out.new_zeros(plan.batch, total)
        dc = h_out.new_zeros(plan.batch, total)
        if ctx.native:
            torch.ops.mfm_scan.lstm_backward(
                cells.u, plan.counts, plan.offsets, _dense(active), _dense(grad_h),
                _dense(grad_c), gates, c_out, tanh_out, d_cells, dh, dc)
        else:
            a_all, factors = _lstm_backward_factors(gates, c_out, tanh_out, first,
                                                    plan.prev_index)
            _lstm_backward_loop(grad_h, grad_c, cells, plan.counts, plan.offsets, active,
                                gates, a_all, factors, d_cells, dh, dc)
            del a_all, factors
        need = ctx.needs_input_grad[7:]
        grad_parts: list[Tensor | None] = [None] * num_parts
        if any(need[:num_parts]):
            if ctx.constant:
                # Each row's input is read at every step it runs: sum over its steps.
                summed = d_cells.new_zeros(plan.batch, 4 * total).index_add_(
                    0, plan.position, d_cells)
            else:
                summed = d_cells
            if num_parts == 1:
                grad_parts[0] = summed
            else:
                grad_parts = [summed[:, gs] if need[k] else None
                              for k, gs in enumerate(cells.gates)]
        grad_w: list[Tensor | None] = []
        if any(need[num_parts:]) and rows > first:
            # h_{t-1} of every row at steps t >= 1 (h_{-1} = 0 adds nothing).
            h_prev = h_out.index_select(0, plan.prev_index)
            d_next = d_cells[first:]
        for k, (w, hs, gs) in enumerate(zip(weights, cells.hidden, cells.gates, strict=True)):
            h = w.shape[1]
            if not need[num_parts + k]:
                grad_w.append(None)
            elif rows <= first:
                grad_w.append(torch.zeros_like(w))
            else:
                grad = (h_prev[:, hs].t() @ d_next[:, gs]).view(h, 4, h).transpose(0, 1)
                grad_w.append(grad[list(_FROM_SCAN)])  # scan gate order -> nn.LSTM order
        return (None, None, None, None, None, None, None, *grad_parts, *grad_w)


def lstm_scan(x_gates: Tensor | Sequence[Tensor], weights: Sequence[Tensor], plan: Packing,
              active: Tensor | None = None, constant: bool = False,
              perm: Tensor | None = None, native: bool = True) -> tuple[Tensor, Tensor]:
    """Run ``M`` LSTM cells side by side over packed rows, from zero states.

    Step ``t``, for each cell ``m``: ``gates = x_gates_m + h_{t-1} @ U_m`` (``U_m`` the
    ``(h_m, 4 h_m)`` recurrent weight), ``c_t = f * c_{t-1} + i * g``,
    ``h_t = o * tanh(c_t)``; where ``active`` is 0 the previous ``(h, c)`` is carried over
    unchanged.

    Args:
        x_gates: the input parts of the gate pre-activations (input projection and all
            biases), each cell's ``4 h_m`` columns in :data:`SCAN_GATES` order: either one
            ``(N, 4 H)`` packed tensor holding the cells one after the other
            (cell-major), or ``M`` tensors ``(N, 4 h_m)``, one per cell (no concatenation
            needed). With ``constant``, ``B`` rows in sorted row order instead of ``N``:
            the same input at every step.
        weights: ``M`` recurrent weights ``(4, h_m, h_m)`` (gate in ``nn.LSTM`` order,
            from, to).
        plan: the packing (:class:`Packing`).
        active: ``(N, H)`` float, 1 where a cell's step is real, 0 where it is carried;
            None: all real.
        constant: ``x_gates`` is per row, not per step.
        perm: :func:`gate_major_order` of the cell sizes, on the inputs' device (built
            when omitted; ``M > 1`` only).
        native: run the time loops with the C++ kernels of :mod:`mfm.model.native` where
            they apply (CPU, float32/64, kernels built); False: the Python loops. Both
            compute the same.

    Returns:
        ``h`` and ``c``, both ``(N, H)`` packed: the states after every step.
    """
    parts = [x_gates] if isinstance(x_gates, Tensor) else list(x_gates)
    if len(parts) not in (1, len(weights)):
        raise ValueError(f"lstm_scan: {len(parts)} input parts for {len(weights)} cells")
    store = torch.is_grad_enabled() and (
        any(x.requires_grad for x in parts) or any(w.requires_grad for w in weights))
    use_native = native and _native.usable(*parts, *weights)
    return _LSTMScan.apply(active, plan, store, constant, perm, use_native, len(parts), *parts,
                           *weights)


# ----------------------------------------------------------------------------- memory scan


class _MemoryScan(torch.autograd.Function):
    """See :func:`memory_scan`."""

    @staticmethod
    def forward(ctx: FunctionCtx, pre: Tensor, candidate: Tensor, any_active: Tensor | None,
                keep: Tensor | None, plan: Packing, store: bool, native: bool, w_u: Tensor,
                w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor) -> Tensor:
        memory = candidate.shape[1]
        rows = plan.rows
        u_out = candidate.new_empty(rows, memory)
        hidden_out = pre.new_empty(pre.shape)
        sig_out = candidate.new_empty(rows, 2 * memory)
        if native:
            torch.ops.mfm_scan.memory_forward(
                pre.detach().contiguous(), candidate.detach().contiguous(),
                w_u.detach().t().contiguous(), w1.detach().t().contiguous(), b1.detach(),
                w2.detach().t().contiguous(), b2.detach(), plan.counts,
                plan.offsets, _dense(any_active), _dense(keep), u_out, hidden_out, sig_out)
        else:
            with torch.no_grad():
                w_out = torch.block_diag(w1.t(), w2.t())  # (2G, 2 mem)
                b_out = torch.cat([b1, b2])
            zeros = candidate.new_zeros(plan.batch, memory)
            _memory_forward_loop(pre.detach(), candidate.detach(), w_u.detach().t(), w_out,
                                 b_out, plan.counts, plan.offsets, any_active, keep, u_out,
                                 hidden_out, sig_out, zeros)
        if store:
            ctx.save_for_backward(u_out, hidden_out, sig_out, candidate, any_active, keep,
                                  w_u, w1, w2)
        ctx.plan = plan
        ctx.native = native
        return plan.last(u_out)

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_u: Tensor) -> tuple[Tensor | None, ...]:
        u_out, hidden_out, sig_out, candidate, any_active, keep, w_u, w1, w2 = (
            ctx.saved_tensors)
        plan: Packing = ctx.plan
        rows, memory = u_out.shape
        gate = w1.shape[1]
        first = plan.counts[0] if plan.steps else 0
        # The output is each row's u after its last step: its gradient enters there.
        grad_last = grad_u.new_zeros(rows, memory).index_add_(
            0, plan.last_index, grad_u * plan.ran.to(grad_u.dtype))
        u_prev = torch.cat([u_out.new_zeros(first, memory),
                            u_out.index_select(0, plan.prev_index)])
        d_new = candidate.new_empty(rows, memory)
        d_sig = sig_out.new_empty(sig_out.shape)
        d_pre = hidden_out.new_empty(hidden_out.shape)
        du = grad_u.new_zeros(plan.batch, memory)
        if ctx.native:
            torch.ops.mfm_scan.memory_backward(
                grad_last, u_out, hidden_out, sig_out, candidate.contiguous(),
                w_u.contiguous(), w1.contiguous(), w2.contiguous(),
                plan.counts, plan.offsets, _dense(any_active), _dense(keep), d_new, d_sig,
                d_pre, du)
        else:
            # d u_new -> d(gate pre-activations): [u_prev, c^] * sigmoid'.
            w_out_t = torch.block_diag(w1, w2)  # (2 mem, 2G)
            p_y = torch.cat([u_prev, candidate], dim=1) * sig_out * (1 - sig_out)
            relu_mask = (hidden_out > 0).to(hidden_out.dtype)
            if keep is not None:
                relu_mask = relu_mask * keep
            _memory_backward_loop(grad_last, plan.counts, plan.offsets, any_active,
                                  sig_out[:, :memory], p_y, relu_mask, w_out_t, w_u, d_new,
                                  d_sig, d_pre, du)
        need = ctx.needs_input_grad
        d_cand = d_new * sig_out[:, memory:] if need[1] else None
        grad_w_u = d_pre.t() @ u_prev if need[7] else None
        grad_w1 = d_sig[:, :memory].t() @ hidden_out[:, :gate] if need[8] else None
        grad_b1 = d_sig[:, :memory].sum(0) if need[9] else None
        grad_w2 = d_sig[:, memory:].t() @ hidden_out[:, gate:] if need[10] else None
        grad_b2 = d_sig[:, memory:].sum(0) if need[11] else None
        return (d_pre if need[0] else None, d_cand, None, None, None, None, None, grad_w_u,
                grad_w1, grad_b1, grad_w2, grad_b2)


def memory_scan(pre: Tensor, candidate: Tensor, plan: Packing, w_u: Tensor,
                gate1: tuple[Tensor, Tensor], gate2: tuple[Tensor, Tensor],
                any_active: Tensor | None = None, keep: Tensor | None = None,
                native: bool = True) -> Tensor:
    """The MFN's multi-view gated memory over packed rows, from ``u_0 = 0``.

    Step ``t``: ``hidden = relu(pre + u @ w_u^T) * keep``,
    ``g_k = sigmoid(hidden_k @ W_k^T + b_k)`` (``hidden_1``, ``hidden_2``: the two halves
    of ``hidden``), ``u = g_1 * u + g_2 * candidate`` where ``any_active`` is 1, else ``u``
    carried over.

    Args:
        pre: ``(N, 2G)`` packed: the part of the gate MLPs' first layer that does not read
            ``u`` (bias included).
        candidate: ``(N, mem)`` packed memory candidates ``c^``.
        plan: the packing.
        w_u: ``(2G, mem)`` the first layer's weight on ``u``.
        gate1: ``(weight (mem, G), bias (mem,))`` of the first gate's output layer.
        gate2: the same for the second gate.
        any_active: ``(N, 1)`` float, 1 where any modality's step is real; None: all.
        keep: ``(N, 2G)`` dropout multipliers of ``hidden`` (0 or ``1 / (1 - p)``);
            None: no dropout.
        native: use the C++ kernels where they apply (see :func:`lstm_scan`).

    Returns:
        ``(B, mem)`` in sorted row order: each row's memory after its last step.
    """
    params = (w_u, gate1[0], gate1[1], gate2[0], gate2[1])
    store = torch.is_grad_enabled() and (
        pre.requires_grad or candidate.requires_grad or any(p.requires_grad for p in params))
    if plan.rows == 0:
        return candidate.new_zeros(plan.batch, candidate.shape[1]) + 0 * w_u.sum()
    use_native = native and _native.usable(pre, candidate, *params)
    return _MemoryScan.apply(pre, candidate, any_active, keep, plan, store, use_native,
                             *params)


def scan_supported(lstm: torch.nn.LSTM) -> bool:
    """Whether ``lstm`` can run as a scan (one layer, one direction, biases, no
    projection)."""
    return (lstm.num_layers == 1 and not lstm.bidirectional and lstm.bias
            and lstm.proj_size == 0)


def lstm_module_weights(lstm: torch.nn.LSTM) -> tuple[Tensor, Tensor, Tensor]:
    """An ``nn.LSTM``'s weights for :func:`lstm_scan`.

    Returns:
        ``W_ih`` ``(4h, d)`` and ``b_ih + b_hh`` ``(4h,)`` with rows in scan gate order,
        and ``W_hh`` as ``(4, h, h)`` (gate in ``nn.LSTM`` order, from, to).
    """
    hidden = lstm.hidden_size
    weight = lstm.weight_hh_l0.view(4, hidden, hidden).transpose(1, 2)
    return (scan_rows(lstm.weight_ih_l0), scan_rows(lstm.bias_ih_l0 + lstm.bias_hh_l0),
            weight)
