"""The native (C++) time loops of the scans against the Python loops.

Both run the same arithmetic, so in float64 they agree to rounding; in float32 the
kernels' polynomial ``exp`` adds about one unit in the last place per nonlinearity.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mfm.config import ModalityConfig, ModelConfig, OutputConfig
from mfm.model import MFM, native
from mfm.model.recurrent import Packing, lstm_scan, memory_scan

needs_kernels = pytest.mark.skipif(
    native.disabled_by_environment() or not native.available(),
    reason="native kernels unavailable here (MFM_NATIVE=0 or no C++ compiler)")


def _grads(out: torch.Tensor, tensors: list[torch.Tensor]) -> list[torch.Tensor | None]:
    weights = torch.linspace(-1.0, 1.0, out.numel(), dtype=out.dtype).view_as(out)
    return list(torch.autograd.grad((out * weights).sum(), tensors, allow_unused=True))


def _compare(run, tensors: list[torch.Tensor], tol: dict) -> None:
    (ref, ref_grads), (nat, nat_grads) = [
        (out, _grads(out, tensors)) for out in (run(False), run(True))]
    torch.testing.assert_close(nat, ref, **tol)
    for k, (a, b) in enumerate(zip(nat_grads, ref_grads, strict=True)):
        assert (a is None) == (b is None), f"gradient {k}"
        if a is not None:
            torch.testing.assert_close(a, b, **tol, msg=f"gradient {k}")


def _ends(batch: int, steps: int, gen: torch.Generator) -> torch.Tensor:
    ends = torch.randint(0, steps + 1, (batch,), generator=gen)
    ends[0] = steps
    ends[1] = 0  # a row that never runs
    return ends


@pytest.fixture(params=[1, 2], ids=["1-thread", "2-threads"])
def threads(request: pytest.FixtureRequest):
    """Run with 1 and with 2 intra-op threads (with 2 the cells run in groups on separate
    threads), restoring the setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("constant", [False, True])
@pytest.mark.parametrize("sizes", [[5], [4, 6, 3], [4, 6, 3, 5]])
def test_lstm_scan_native_matches_python(sizes: list[int], constant: bool, masked: bool,
                                         dtype: torch.dtype, threads: int) -> None:
    gen = torch.Generator().manual_seed(len(sizes))
    batch, steps, total = 9, 7, sum(sizes)
    plan = Packing.build(_ends(batch, steps, gen), steps)
    rows = plan.batch if constant else plan.rows
    parts = [torch.randn(rows, 4 * h, generator=gen, dtype=dtype).requires_grad_()
             for h in sizes]
    weights = [(0.5 * torch.randn(4, h, h, generator=gen, dtype=dtype)).requires_grad_()
               for h in sizes]
    active = None
    if masked:
        active = (torch.rand(plan.rows, total, generator=gen) < 0.7).to(dtype)

    def run(use: bool) -> torch.Tensor:
        h, c = lstm_scan(parts, weights, plan, active, constant=constant, native=use)
        return torch.cat([h, c], dim=1)

    tol = ({"rtol": 1e-10, "atol": 1e-10} if dtype == torch.float64
           else {"rtol": 1e-4, "atol": 1e-5})
    _compare(run, [*parts, *weights], tol)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("dropout", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_memory_scan_native_matches_python(masked: bool, dropout: bool, dtype: torch.dtype,
                                           threads: int) -> None:
    # 40 rows: with 2 threads the kernels split them into two ranges of about equal work
    gen = torch.Generator().manual_seed(3)
    batch, steps, memory, gate = 40, 6, 5, 4
    plan = Packing.build(_ends(batch, steps, gen), steps)
    n = plan.rows

    def leaf(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=dtype).requires_grad_()

    pre, candidate = leaf(n, 2 * gate), leaf(n, memory)
    w_u, w1, b1, w2, b2 = (leaf(2 * gate, memory), leaf(memory, gate), leaf(memory),
                           leaf(memory, gate), leaf(memory))
    any_active = (torch.rand(n, 1, generator=gen) < 0.7).to(dtype) if masked else None
    keep = ((torch.rand(n, 2 * gate, generator=gen) < 0.6).to(dtype) / 0.6
            if dropout else None)

    def run(use: bool) -> torch.Tensor:
        return memory_scan(pre, candidate, plan, w_u, (w1, b1), (w2, b2), any_active, keep,
                           native=use)

    tol = ({"rtol": 1e-10, "atol": 1e-10} if dtype == torch.float64
           else {"rtol": 1e-4, "atol": 1e-5})
    _compare(run, [pre, candidate, w_u, w1, b1, w2, b2], tol)


@needs_kernels
def test_mfm_native_kernels_switch() -> None:
    """``model.native_kernels`` changes how, not what: the training path's errors,
    predictions and gradients are the same either way (float64, with an absent
    modality so that the surrogate scan runs too)."""
    config = ModelConfig(
        default_modality=ModalityConfig(hidden=4, encoder_hidden=3, z=3, f=3, dropout=0.0),
        zy=4, fy=4, memory=5, attention_hidden=6, gate_hidden=5, attention_dropout=0.0,
        gate_dropout=0.0, alignment="aligned",
        output=OutputConfig(kind="regression", size=1),  # type: ignore[arg-type]
    )
    sizes = {"wide": 16, "narrow": 3, "third": 5}  # wide: its private encoder scans too
    gen = torch.Generator().manual_seed(4)
    lengths = {n: torch.tensor([6, 2, 4, 0, 5]) for n in sizes}
    lengths["narrow"][1] = 0
    inputs = {n: torch.randn(5, 6, d, generator=gen, dtype=torch.float64)
              for n, d in sizes.items()}
    results = []
    state = None
    for use in (False, True):
        torch.manual_seed(1)
        model = MFM(dataclasses.replace(config, native_kernels=use), sizes).double().train()
        if state is None:
            state = model.state_dict()
        model.load_state_dict(state)
        out = model(inputs, lengths, errors=True)
        assert out.reconstruction_errors is not None
        loss = (sum(out.reconstruction_errors.values())
                + sum(p.sin().sum() for p in out.predictions.values()))
        grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
        results.append((loss, grads))
    (loss_ref, grads_ref), (loss_nat, grads_nat) = results
    torch.testing.assert_close(loss_nat, loss_ref, rtol=1e-10, atol=1e-10)
    for a, b in zip(grads_nat, grads_ref, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_environment_switch_turns_kernels_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MFM_NATIVE", "0")
    assert native.disabled_by_environment()
    assert not native.usable(torch.zeros(1))


def test_without_a_compiler_it_warns_once_and_computes_the_same(tmp_path: Path) -> None:
    """A machine without a C++ compiler: one warning naming the reason, the Python loops,
    the same numbers."""
    script = (
        "import warnings, torch\n"
        "from mfm.model.recurrent import Packing, lstm_scan\n"
        "plan = Packing.build(torch.tensor([3, 1]), 3)\n"
        "x = torch.randn(plan.rows, 8, dtype=torch.float64)\n"
        "w = [torch.randn(4, 2, 2, dtype=torch.float64)]\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    a, _ = lstm_scan(x, w, plan)\n"
        "    lstm_scan(x, w, plan)\n"
        "b, _ = lstm_scan(x, w, plan, native=False)\n"
        "messages = [str(c.message) for c in caught]\n"
        "assert len(messages) == 1 and 'no C++ compiler' in messages[0], messages\n"
        "assert torch.equal(a, b)\n"
    )
    env = {**os.environ, "PATH": str(tmp_path), "CXX": "", "MFM_CACHE_DIR": str(tmp_path)}
    env.pop("MFM_NATIVE", None)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
