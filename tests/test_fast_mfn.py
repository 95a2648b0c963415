"""The fast recurrences (``mfm.model.recurrent``) against the reference per-step loops.

Everything runs in float64 so that the two formulations must agree to ~1e-10: outputs and
the gradients with respect to the inputs and to every parameter.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mfm.config import ConfigError, MFMConfig, ModalityConfig, ModelConfig, OutputConfig
from mfm.data.batch import step_mask
from mfm.model import MFM, MemoryFusionNetwork, aligned_view
from mfm.model.encoders import SequenceEncoder
from mfm.model.recurrent import Packing

TOL = {"rtol": 1e-10, "atol": 1e-10}


def assert_same_grads(make_output, tensors: list[torch.Tensor]) -> None:
    """``make_output(fast)`` for both paths: outputs and gradients must agree."""
    results = []
    for fast in (False, True):
        out = make_output(fast)
        weights = torch.linspace(-1.0, 1.0, out.numel(), dtype=out.dtype).view_as(out)
        grads = torch.autograd.grad((out * weights).sum(), tensors, allow_unused=True)
        results.append((out, grads))
    (ref, ref_grads), (fast, fast_grads) = results
    torch.testing.assert_close(fast, ref, **TOL)
    for k, (g_fast, g_ref) in enumerate(zip(fast_grads, ref_grads, strict=True)):
        if g_ref is None or g_fast is None:
            zero = g_fast if g_ref is None else g_ref
            assert zero is None or torch.count_nonzero(zero) == 0, f"gradient {k}"
        else:
            torch.testing.assert_close(g_fast, g_ref, **TOL, msg=f"gradient {k}")


def ragged_case(num_modalities: int, alignment: str, seed: int):
    """Aligned views of ragged inputs: sample 1 lacks modality 0, sample 2 has nothing."""
    gen = torch.Generator().manual_seed(seed)
    dims = [3, 5, 2, 4][:num_modalities]
    batch, steps = 7, 6
    inputs, lengths = [], []
    for m, d in enumerate(dims):
        padded = steps if alignment == "aligned" else steps + 2 * m
        n = torch.randint(1, padded + 1, (batch,), generator=gen)
        n[0] = padded
        n[2] = 0
        if m == 0:
            n[1] = 0
        x = torch.randn(batch, padded, d, generator=gen, dtype=torch.float64)
        inputs.append(x * step_mask(n, padded).unsqueeze(-1))
        lengths.append(n)
    views, mask = aligned_view(inputs, lengths, alignment, 5)
    return dims, [v.detach().requires_grad_() for v in views], mask


@pytest.mark.parametrize("pack", [True, False])
@pytest.mark.parametrize("alignment", ["aligned", "resample"])
@pytest.mark.parametrize("num_modalities", [1, 3, 4])
@pytest.mark.parametrize("cell", ["lstm", "lsthm"])
def test_fast_mfn_matches_reference(cell: str, num_modalities: int, alignment: str,
                                    pack: bool) -> None:
    dims, views, mask = ragged_case(num_modalities, alignment, seed=num_modalities)
    torch.manual_seed(0)
    hidden = [4, 6, 3, 5][:num_modalities]
    mfn = MemoryFusionNetwork(dims, hidden, memory=5, attention_hidden=7, attention_dropout=0.3,
                              gate_hidden=6, gate_dropout=0.4, cell=cell).double().eval()

    def output(fast: bool) -> torch.Tensor:
        if fast and cell == "lstm":
            return mfn.fast_forward(views, mask, pack=pack)
        return mfn(views, mask, fast=fast)

    assert_same_grads(output, [*views, *mfn.parameters()])


@pytest.mark.parametrize("pack", [True, False])
def test_fast_mfn_any_mask_pattern(pack: bool) -> None:
    """Masked steps in the middle of a sequence carry the state over in both paths."""
    torch.manual_seed(3)
    dims, hidden = [3, 2, 4], [5, 3, 4]
    mfn = MemoryFusionNetwork(dims, hidden, memory=4, attention_hidden=6, attention_dropout=0.0,
                              gate_hidden=5, gate_dropout=0.0).double()
    views = [torch.randn(6, 8, d, dtype=torch.float64, requires_grad=True) for d in dims]
    mask = torch.rand(6, 8, 3) > 0.4
    mask[4] = False  # a sample with no real step at all
    mask[5, :, 1] = False

    def output(fast: bool) -> torch.Tensor:
        return mfn.fast_forward(views, mask, pack=pack) if fast else mfn(views, mask, fast=False)

    assert_same_grads(output, [*views, *mfn.parameters()])


def test_fast_mfn_dropout() -> None:
    """Dropout draws its masks differently in the two paths: training mode gives other
    (finite) samples, evaluation mode the same function."""
    dims, views, mask = ragged_case(3, "aligned", seed=5)
    torch.manual_seed(0)
    mfn = MemoryFusionNetwork(dims, [4, 6, 3], memory=5, attention_hidden=7,
                              attention_dropout=0.5, gate_dropout=0.5, gate_hidden=6).double()
    fast = mfn(views, mask)
    slow = mfn(views, mask, fast=False)
    assert torch.isfinite(fast).all() and not torch.allclose(fast, slow)
    fast.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in mfn.parameters() if p.grad is not None)
    mfn.eval()
    torch.testing.assert_close(mfn(views, mask), mfn(views, mask, fast=False), **TOL)


def test_fast_encoder_matches_lstm() -> None:
    torch.manual_seed(1)
    encoder = SequenceEncoder(12, 3, 4).double()
    assert encoder.fast  # wide input: the scan is used
    x = torch.randn(5, 7, 12, dtype=torch.float64)
    lengths = torch.tensor([7, 3, 0, 1, 5])
    x = (x * step_mask(lengths, 7).unsqueeze(-1)).requires_grad_()

    def output(fast: bool) -> torch.Tensor:
        encoder.fast = fast
        return encoder(x, lengths)

    assert_same_grads(output, [x, *encoder.parameters()])
    assert not SequenceEncoder(5, 8, 4).fast  # narrow input: nn.LSTM is faster


def test_packing_layout() -> None:
    ends = torch.tensor([2, 0, 4, 4, 1])
    plan = Packing.build(ends, 4, pack=True)
    assert plan.counts == [4, 3, 2, 2] and plan.rows == 11
    assert plan.order.tolist() == [2, 3, 0, 4, 1]
    x = torch.arange(20.0).view(5, 4, 1)
    back = plan.unpack(plan.pack(x), fill=-1.0)
    expected = torch.where(step_mask(ends, 4).unsqueeze(-1), x, -1.0)
    assert torch.equal(back, expected)
    last = plan.unsort(plan.last(plan.pack(x))).view(-1)
    assert last.tolist() == [1.0, 0.0, 11.0, 15.0, 16.0]
    unpacked = Packing.build(ends, 4, pack=False)
    assert unpacked.counts == [5, 5, 5, 5] and unpacked.order.tolist() == [0, 1, 2, 3, 4]
    assert plan.unsort(plan.last(plan.pack(x))).tolist() == unpacked.last(
        unpacked.pack(x)).tolist()


def test_mfm_fast_recurrence_switch() -> None:
    """The whole model gives the same outputs and gradients with and without the fast
    recurrences (evaluation mode, float64)."""
    config = ModelConfig(
        default_modality=ModalityConfig(hidden=4, encoder_hidden=3, z=3, f=3, dropout=0.0),
        zy=4, fy=4, memory=5, attention_hidden=6, gate_hidden=5, attention_dropout=0.2,
        gate_dropout=0.2, alignment="aligned",
        output=OutputConfig(kind="regression", size=1),  # type: ignore[arg-type]
    )
    sizes = {"wide": 16, "narrow": 3}
    torch.manual_seed(2)
    models = {}
    for fast in (False, True):
        model = MFM(dataclasses.replace(config, fast_recurrence=fast), sizes).double().eval()
        if models:
            model.load_state_dict(models[False].state_dict())
        models[fast] = model
    assert models[True].encoders["wide"].fast and not models[False].encoders["wide"].fast
    gen = torch.Generator().manual_seed(4)
    lengths = {n: torch.tensor([6, 2, 4, 0]) for n in sizes}
    inputs = {n: torch.randn(4, 6, d, generator=gen, dtype=torch.float64)
              * step_mask(lengths[n], 6).unsqueeze(-1) for n, d in sizes.items()}

    outputs = {}
    for fast, model in models.items():
        out = model(inputs, lengths)
        flat = torch.cat([out.prediction.view(-1), out.z_y.view(-1),
                          *[out.z[n].view(-1) for n in sizes],
                          *[out.reconstructions[n].reshape(-1) for n in sizes]])
        grads = torch.autograd.grad(flat.sin().sum(), list(model.parameters()),
                                    allow_unused=True)
        outputs[fast] = (flat, grads)
    torch.testing.assert_close(outputs[True][0], outputs[False][0], **TOL)
    for g_fast, g_ref in zip(outputs[True][1], outputs[False][1], strict=True):
        if g_ref is None:
            assert g_fast is None
        else:
            torch.testing.assert_close(g_fast, g_ref, **TOL)


def test_fast_recurrence_config_key() -> None:
    assert MFMConfig.from_dict({}).model.fast_recurrence is True
    assert MFMConfig.from_dict({"model": {"fast_recurrence": False}}).model.fast_recurrence \
        is False
    with pytest.raises(ConfigError, match="fast_recurrence"):
        MFMConfig.from_dict({"model": {"fast_recurrence": "yes"}})


def test_predict_skips_decoders_and_matches_forward(monkeypatch: pytest.MonkeyPatch) -> None:
    config = ModelConfig(default_modality=ModalityConfig(hidden=4, z=3, f=3), zy=4, fy=4,
                         memory=5, attention_hidden=6, gate_hidden=5,
                         output=OutputConfig(kind="regression", size=1))  # type: ignore[arg-type]
    model = MFM(config, {"a": 3, "b": 2}).eval()
    inputs = {"a": torch.randn(3, 5, 3), "b": torch.randn(3, 5, 2)}
    lengths = {"a": torch.tensor([5, 2, 1]), "b": torch.tensor([5, 0, 3])}
    expected = model(inputs, lengths).predictions
    for decoder in model.decoders.values():
        monkeypatch.setattr(decoder, "forward", lambda *a, **k: pytest.fail("decoder ran"))
    for name, value in model.predict(inputs, lengths).items():
        torch.testing.assert_close(value, expected[name])


@pytest.mark.parametrize("lengths", [[1, 0, 1, 0], [0, 0, 0, 0], [2, 0, 0, 1]])
def test_fast_paths_with_rows_that_never_run(lengths: list[int]) -> None:
    """Absent rows (length 0) next to short ones: the packed buffer is smaller than the
    batch, and rows that never run must read as zero state."""
    torch.manual_seed(2)
    n = torch.tensor(lengths)
    steps = max(1, int(n.max()))
    encoder = SequenceEncoder(12, 3, 4).double()
    x = torch.randn(4, steps, 12, dtype=torch.float64)
    x = (x * step_mask(n, steps).unsqueeze(-1)).requires_grad_()

    def encoded(fast: bool) -> torch.Tensor:
        encoder.fast = fast
        return encoder(x, n)

    assert_same_grads(encoded, [x, *encoder.parameters()])
    mfn = MemoryFusionNetwork([12, 2], [3, 4], 5, 6, 0.0, 6, 0.0).double()
    views = [x, torch.randn(4, steps, 2, dtype=torch.float64, requires_grad=True)]
    mask = torch.stack([step_mask(n, steps), step_mask(n.flip(0), steps)], dim=-1)
    assert_same_grads(lambda fast: mfn(views, mask, fast=fast), [*views, *mfn.parameters()])


def paired_models(sizes: dict[str, int], **changes) -> dict[bool, MFM]:
    """The same MFM (float64, evaluation mode) with and without the fast recurrences."""
    config = ModelConfig(
        default_modality=ModalityConfig(hidden=4, encoder_hidden=3, z=3, f=3, dropout=0.0),
        zy=4, fy=4, memory=5, attention_hidden=6, gate_hidden=5, attention_dropout=0.0,
        gate_dropout=0.0, output=OutputConfig(kind="regression", size=1),  # type: ignore[arg-type]
    )
    config = dataclasses.replace(config, **changes)
    torch.manual_seed(5)
    models: dict[bool, MFM] = {}
    for fast in (False, True):
        model = MFM(dataclasses.replace(config, fast_recurrence=fast), sizes).double().eval()
        if models:
            model.load_state_dict(models[False].state_dict())
        models[fast] = model
    return models


def ragged_inputs(sizes: dict[str, int], steps: dict[str, int], seed: int
                  ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Ragged right-padded inputs with garbage (large values) in the padding; sample 1 lacks
    the first modality, sample 2 has none, sample 0 is full."""
    gen = torch.Generator().manual_seed(seed)
    batch = 6
    inputs, lengths = {}, {}
    for m, (name, d) in enumerate(sizes.items()):
        t = steps[name]
        n = torch.randint(1, t + 1, (batch,), generator=gen)
        n[0], n[2] = t, 0
        if m == 0:
            n[1] = 0
        inputs[name] = torch.randn(batch, t, d, generator=gen, dtype=torch.float64) * 1e3
        inputs[name] = torch.where(step_mask(n, t).unsqueeze(-1), inputs[name] / 1e3,
                                   inputs[name]).requires_grad_()
        lengths[name] = n
    return inputs, lengths


def reference_errors(model: MFM, inputs, lengths, scored) -> dict[str, torch.Tensor]:
    """``masked_mse`` of the full reconstructions (the plain path)."""
    from mfm.losses.objective import masked_mse

    out = model(inputs, lengths)
    return {n: masked_mse(out.reconstructions[n], inputs[n], scored[n])
            for n in scored}


@pytest.mark.parametrize("num_modalities", [1, 3, 4])
@pytest.mark.parametrize("aligned", [True, False])
def test_training_path_matches_reference(num_modalities: int, aligned: bool) -> None:
    """What training computes (``errors=True``: one joint scan for the MFN's cells and the
    private encoders, decoders that score valid steps only) against the plain modules:
    latents, predictions, reconstruction errors and every gradient, for M = 1, 3, 4."""
    sizes = dict(list({"a": 12, "b": 2, "c": 5, "d": 3}.items())[:num_modalities])
    steps = {n: 5 if aligned else 4 + k for k, n in enumerate(sizes)}
    models = paired_models(sizes)
    inputs, lengths = ragged_inputs(sizes, steps, seed=num_modalities)
    results = {}
    for fast, model in models.items():
        if fast:
            out = model(inputs, lengths, errors=True)
            errors = out.reconstruction_errors
            assert out.reconstructions == {}
        else:
            out = model(inputs, lengths)
            errors = reference_errors(model, inputs, lengths, lengths)
        flat = torch.cat([out.prediction.view(-1), out.z_y.view(-1),
                          *[out.z[n].view(-1) for n in sizes],
                          torch.stack([errors[n] for n in sizes])])
        tensors = [*model.parameters(), *inputs.values()]
        grads = torch.autograd.grad(flat.sin().sum(), tensors, allow_unused=True)
        results[fast] = (flat, grads)
    torch.testing.assert_close(results[True][0], results[False][0], **TOL)
    for k, (g_fast, g_ref) in enumerate(zip(results[True][1], results[False][1], strict=True)):
        if g_ref is None or g_fast is None:
            zero = g_fast if g_ref is None else g_ref
            assert zero is None or torch.count_nonzero(zero) == 0, f"gradient {k}"
        else:
            torch.testing.assert_close(g_fast, g_ref, **TOL, msg=f"gradient {k}")


def test_scored_steps_of_a_missing_modality_pass() -> None:
    """``errors=<lengths>`` scores only the given steps (a missing-modality pass scores the
    removed samples' steps): equal to ``masked_mse`` with those lengths."""
    sizes = {"a": 12, "b": 2, "c": 5}
    models = paired_models(sizes)
    inputs, lengths = ragged_inputs(sizes, dict.fromkeys(sizes, 5), seed=9)
    removed = {n: torch.tensor([True, False, False, True, False, True]) for n in sizes}
    removed["b"] = ~removed["b"]
    from mfm.losses.objective import removed_lengths

    scored = removed_lengths(removed, lengths)
    kept = {n: torch.where(removed[n], 0, lengths[n]) for n in sizes}
    fast = models[True](inputs, kept, errors=scored).reconstruction_errors
    ref = reference_errors(models[False], inputs, kept, scored)
    assert fast is not None and set(fast) == set(sizes)
    for n in sizes:
        torch.testing.assert_close(fast[n], ref[n], **TOL)
    none = {n: torch.zeros(6, dtype=torch.long) for n in sizes}
    assert all(float(v.detach()) == 0 for v in models[True](inputs, lengths, errors=none)
               .reconstruction_errors.values())
