"""Where one ``mfm`` training step spends its time (MOSI shapes, ``mosi-mmsa`` preset).

Usage: ``.venv/bin/python bench/_profile_step.py [--threads 1] [--batch 64]``

Prints (1) the wall time of a whole step (forward, objective, backward, Adam) and of the
forward + backward of each part on its own (MFN, private encoders, decoders), and (2) the
``torch.profiler`` table of the top operators by self CPU time over a few steps, grouped by
input shape. (3) Shows the cost of the MFN loop's per-step slicing ``x[:, t]`` in backward
against ``unbind``, on a tensor of the MFN's gate shape. (4) Counts the floating-point
operations of the step's matrix products and divides them by the rate this machine's
matrix multiply sustains: the least time any implementation of the same computation needs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402


def _timed(fn: Callable[[], Any], reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return _common.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args(argv)
    _common.pin_threads(args.threads)
    import infer
    import torch
    from torch.profiler import ProfilerActivity, profile

    from mfm.losses.objective import objective_terms
    from mfm.model.mfn import aligned_view

    _common.pin_threads(args.threads)
    torch.manual_seed(0)
    model, config = infer.build(args.steps)
    model.train()
    inputs, lengths = infer.make_inputs(args.batch, args.steps)
    target = torch.randn(args.batch).clamp(-3, 3)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-3, fused=True)
    names = model.names

    def step() -> None:
        # What the engine's training step runs: reconstruction errors, not reconstructions.
        output = model(inputs, lengths, errors=True)
        terms = objective_terms(output, inputs, lengths, target, config.loss,
                                config.model.output)
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        optimizer.step()

    views, mask = aligned_view([inputs[n] for n in names], [lengths[n] for n in names],
                               config.model.alignment, config.model.mfn_steps)

    def mfn_part() -> None:
        model.zero_grad(set_to_none=True)
        model.mfn(views, mask).sum().backward()

    def encoders_part() -> None:
        model.zero_grad(set_to_none=True)
        sum(model.encoders[n](inputs[n], lengths[n]).sum() for n in names).backward()

    def joint_part() -> None:
        model.zero_grad(set_to_none=True)
        z_y, z = model.encode(inputs, lengths)
        (z_y.sum() + sum(v.sum() for v in z.values())).backward()

    f_y = torch.randn(args.batch, config.model.fy, requires_grad=True)
    f = {n: torch.randn(args.batch, config.model.modality(n).f, requires_grad=True)
         for n in names}

    def decoders_part() -> None:
        model.zero_grad(set_to_none=True)
        errors = model.reconstruction_errors(f_y, f, inputs, lengths)
        sum(errors.values()).backward()

    rows = []
    whole = _timed(step, args.reps)
    rows.append(["whole training step", whole * 1e3, 100.0])
    for label, fn in (("joint encoding (MFN + private encoders) forward+backward", joint_part),
                      ("  MFN alone", mfn_part),
                      ("  private encoders alone", encoders_part),
                      ("decoder errors forward+backward", decoders_part)):
        t = _timed(fn, args.reps)
        rows.append([label, t * 1e3, 100.0 * t / whole])
    print(f"batch {args.batch}, {args.steps} steps, dims 768/5/20, mosi-mmsa preset, "
          f"{args.threads} thread(s), torch {torch.__version__}; median of {args.reps}:")
    print(_common.table(["part", "ms", "% of step"], rows))

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(3):
            step()
    print("\nTop operators of 3 training steps by self CPU time:")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    print(prof.key_averages(group_by_input_shape=True).table(
        sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=34,
        max_shapes_column_width=60))

    gates = torch.randn(args.batch, args.steps, 4 * model.mfn.total_hidden, requires_grad=True)

    def sliced() -> None:
        gates.grad = None
        sum(gates[:, t].sum() for t in range(args.steps)).backward()

    def unbound() -> None:
        gates.grad = None
        sum(x.sum() for x in gates.unbind(1)).backward()

    print(f"\nbackward of reading a {tuple(gates.shape)} tensor step by step: "
          f"x[:, t] {_timed(sliced, args.reps) * 1e3:.1f} ms, "
          f"x.unbind(1) {_timed(unbound, args.reps) * 1e3:.1f} ms")

    # (4) The floor set by the matrix products alone: count the step's floating-point
    # operations (the Python loops, so that every product is an aten operator the counter
    # sees; the native kernels run the same products) and divide by what this machine's
    # matrix multiply sustains on a large product with the same threads.
    from torch.utils.flop_counter import FlopCounterMode

    before = os.environ.get("MFM_NATIVE")
    os.environ["MFM_NATIVE"] = "0"
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    if before is None:
        del os.environ["MFM_NATIVE"]
    else:
        os.environ["MFM_NATIVE"] = before
    flops = counter.get_total_flops()
    a, b = torch.randn(2048, 768), torch.randn(768, 1024)
    out = torch.empty(2048, 1024)
    rate = 2 * 2048 * 768 * 1024 / _timed(lambda: torch.mm(a, b, out=out), 20)
    print(f"\nmatrix products of one training step: {flops / 1e9:.2f} GFLOP; this machine's "
          f"matrix multiply sustains {rate / 1e9:.0f} GFLOP/s ({args.threads} thread(s)) on a "
          f"2048x768 @ 768x1024 product, so the products alone need at least "
          f"{flops / rate * 1e3:.1f} ms per step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
