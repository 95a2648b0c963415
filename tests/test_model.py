"""The MFM model: shapes, padding invariance, the batched MFN, learning a tiny batch."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from mfm.config import LossConfig, ModalityConfig, ModelConfig, OutputConfig
from mfm.data import Batch
from mfm.losses import objective_terms
from mfm.model import MFM, MemoryFusionNetwork, aligned_view, resample_segments


def make_config(kind: str = "regression", classes: int = 1, **changes: object) -> ModelConfig:
    size = classes if kind == "classification" else 1
    config = ModelConfig(
        default_modality=ModalityConfig(hidden=8, z=4, f=4, dropout=0.0),
        zy=6, fy=5, memory=7, attention_hidden=9, gate_hidden=10,
        attention_dropout=0.0, gate_dropout=0.0,
        output=OutputConfig(kind=kind, size=size),  # type: ignore[arg-type]
    )
    return dataclasses.replace(config, **changes)


def random_inputs(sizes: dict[str, int], batch: int, steps: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    inputs = {n: torch.randn(batch, steps, d, generator=gen) for n, d in sizes.items()}
    lengths = {n: torch.randint(1, steps + 1, (batch,), generator=gen) for n in sizes}
    batch_ = Batch.from_padded(inputs, lengths)  # zero the padding
    return batch_.inputs, batch_.lengths


@pytest.mark.parametrize("num_modalities", [1, 2, 3, 5])
@pytest.mark.parametrize("kind", ["regression", "classification"])
def test_shapes_forward_backward(num_modalities: int, kind: str) -> None:
    sizes = {f"mod{i}": 3 + i for i in range(num_modalities)}
    config = make_config(kind, classes=4)
    model = MFM(config, sizes)
    inputs, lengths = random_inputs(sizes, batch=6, steps=7)
    out = model(inputs, lengths)
    assert out.prediction.shape == ((6,) if kind == "regression" else (6, 4))
    assert out.z_y.shape == (6, 6) and out.f_y.shape == (6, 5)
    for name, d in sizes.items():
        assert out.reconstructions[name].shape == (6, 7, d)
        assert out.z[name].shape == (6, 4) and out.f[name].shape == (6, 4)
    target = torch.randn(6) if kind == "regression" else torch.randint(0, 4, (6,))
    terms = objective_terms(out, inputs, lengths, target, LossConfig(), config.output)
    assert set(terms) == {"loss", "pred", "mmd_zy"} | {f"recon_{n}" for n in sizes} | {
        f"mmd_za_{n}" for n in sizes
    }
    terms["loss"].backward()
    # The surrogate path only runs when a modality is absent (tests/test_missing.py).
    missing = [n for n, p in model.named_parameters()
               if p.grad is None and not n.startswith("surrogate")]
    assert not missing, f"parameters without gradient: {missing}"


def test_per_modality_sizes_by_name() -> None:
    config = make_config(modalities={"text": ModalityConfig(hidden=11, z=3, f=2)})
    model = MFM(config, {"text": 5, "audio": 2})
    assert model.encoders["text"].lstm.hidden_size == 11
    assert model.encoders["audio"].lstm.hidden_size == 8  # the default
    assert model.mfn.output_size == 11 + 8 + 7


@pytest.mark.parametrize("alignment", ["aligned", "resample"])
def test_trailing_padding_changes_nothing(alignment: str) -> None:
    torch.manual_seed(0)
    sizes = {"a": 3, "b": 4, "c": 2}
    model = MFM(make_config(alignment=alignment, mfn_steps=5), sizes).eval()
    inputs, lengths = random_inputs(sizes, batch=5, steps=6)
    extra = {n: torch.cat([x, torch.randn(5, 4, x.shape[2]) * 0], dim=1) for n, x in
             inputs.items()}
    # Garbage in the padding must not matter either.
    garbage = {n: torch.cat([x, torch.randn(5, 4, x.shape[2]) * 100], dim=1) for n, x in
               inputs.items()}
    base = model(inputs, lengths)
    for padded in (extra, garbage):
        other = model(padded, lengths)
        torch.testing.assert_close(other.prediction, base.prediction)
        torch.testing.assert_close(other.z_y, base.z_y)
        for n in sizes:
            torch.testing.assert_close(other.z[n], base.z[n])
            torch.testing.assert_close(other.reconstructions[n][:, :6], base.reconstructions[n])
        target = torch.randn(5)
        cfg = LossConfig()
        torch.manual_seed(1)
        t1 = objective_terms(base, inputs, lengths, target, cfg, model.config.output)
        torch.manual_seed(1)
        t2 = objective_terms(other, padded, lengths, target, cfg, model.config.output)
        for key in t1:
            if key.startswith(("pred", "recon")):
                torch.testing.assert_close(t1[key], t2[key])


def test_leading_and_trailing_padding_agree() -> None:
    torch.manual_seed(0)
    sizes = {"a": 3, "b": 2}
    model = MFM(make_config(), sizes).eval()
    inputs, lengths = random_inputs(sizes, batch=4, steps=6)
    # Move the valid steps to the end: leading padding, as MFN/MultiBench files have it.
    leading = {}
    for n, x in inputs.items():
        rows = []
        for b in range(4):
            k = int(lengths[n][b])
            rows.append(torch.cat([torch.zeros(6 - k, x.shape[2]), x[b, :k]]))
        leading[n] = torch.stack(rows)
    left = Batch.from_padded(leading, lengths, padding="left")
    torch.testing.assert_close(left.inputs["a"], inputs["a"])
    out_left = model(left.inputs, left.lengths)
    out_right = model(inputs, lengths)
    torch.testing.assert_close(out_left.prediction, out_right.prediction)


def test_unaligned_modalities_use_resampling() -> None:
    sizes = {"words": 3, "frames": 2}
    model = MFM(make_config(mfn_steps=4), sizes)
    inputs = {"words": torch.randn(2, 5, 3), "frames": torch.randn(2, 40, 2)}
    out = model(inputs)
    assert out.reconstructions["frames"].shape == (2, 40, 2)
    with pytest.raises(ValueError, match="same number of steps"):
        MFM(make_config(alignment="aligned"), sizes)(inputs)


def test_resample_segments_rule() -> None:
    x = torch.arange(6.0).view(1, 6, 1)
    # L = 6 -> 3 segments: means of [0,1], [2,3], [4,5].
    out = resample_segments(x, torch.tensor([6]), 3)
    assert out.view(-1).tolist() == [0.5, 2.5, 4.5]
    # L = 2 -> 4 steps: nearest repetition of frames 0, 0, 1, 1.
    out = resample_segments(x, torch.tensor([2]), 4)
    assert out.view(-1).tolist() == [0.0, 0.0, 1.0, 1.0]
    # L = 0 -> zeros; its mask is off.
    views, mask = aligned_view([x], [torch.tensor([0])], "resample", 3)
    assert views[0].abs().sum() == 0 and not mask.any()


class ReferenceMFN(nn.Module):
    """A plain MFN: a Python loop over per-modality LSTM cells inside the time loop."""

    def __init__(self, fast: MemoryFusionNetwork) -> None:
        super().__init__()
        self.fast = fast

    def forward(self, inputs, mask):
        fast = self.fast
        batch, steps = mask.shape[:2]
        hs = [torch.zeros(batch, h) for h in fast.hidden_sizes]
        cs = [torch.zeros(batch, h) for h in fast.hidden_sizes]
        u = torch.zeros(batch, fast.memory_size)
        for t in range(steps):
            new_h, new_c = [], []
            for m, (x, h, c) in enumerate(zip(inputs, hs, cs, strict=True)):
                proj = fast.input_proj[m]
                w = fast.recurrent[m]  # (4, h, h) from -> to
                gates = proj(x[:, t]) + torch.cat([h @ w[g] for g in range(4)], dim=1)
                if fast.memory_proj is not None:
                    total = fast.total_hidden
                    offset = sum(fast.hidden_sizes[:m])
                    full = fast.memory_proj(u).view(batch, 4, total)
                    gates = gates + full[:, :, offset:offset + h.shape[1]].reshape(batch, -1)
                i, f, g, o = gates.chunk(4, dim=1)
                c2 = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h2 = torch.sigmoid(o) * torch.tanh(c2)
                keep = mask[:, t, m].unsqueeze(1)
                new_h.append(torch.where(keep, h2, h))
                new_c.append(torch.where(keep, c2, c))
            c_star = torch.cat(cs + new_c, dim=1)
            attended = torch.softmax(fast.attention(c_star), dim=1) * c_star
            cand = torch.tanh(fast.candidate(attended))
            hid = torch.relu(fast.gates_in(torch.cat([attended, u], dim=1)))
            g1 = torch.sigmoid(fast.gate1_out(hid[:, : fast.gate_hidden]))
            g2 = torch.sigmoid(fast.gate2_out(hid[:, fast.gate_hidden:]))
            u = torch.where(mask[:, t].any(1, keepdim=True), g1 * u + g2 * cand, u)
            hs, cs = new_h, new_c
        return torch.cat(hs + [u], dim=1)


@pytest.mark.parametrize("cell", ["lstm", "lsthm"])
@pytest.mark.parametrize("num_modalities", [1, 3, 4])
def test_batched_mfn_equals_reference_loop(cell: str, num_modalities: int) -> None:
    """The optimised MFN (one batched step for all modalities) computes exactly what a
    plain per-modality loop computes: outputs and gradients."""
    torch.manual_seed(num_modalities)
    dims = [3, 5, 2, 4][:num_modalities]
    hidden = [4, 6, 3, 5][:num_modalities]
    fast = MemoryFusionNetwork(dims, hidden, memory=5, attention_hidden=7,
                               attention_dropout=0.0, gate_hidden=6, gate_dropout=0.0,
                               cell=cell)
    inputs = [torch.randn(4, 6, d, requires_grad=True) for d in dims]
    mask = torch.rand(4, 6, num_modalities) > 0.3
    expected = ReferenceMFN(fast)(inputs, mask)
    weights = torch.randn_like(expected)
    grads_ref = torch.autograd.grad((expected * weights).sum(), [*inputs, *fast.parameters()],
                                    allow_unused=True)
    actual = fast(inputs, mask)
    grads_fast = torch.autograd.grad((actual * weights).sum(), [*inputs, *fast.parameters()],
                                     allow_unused=True)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)
    for g_fast, g_ref in zip(grads_fast, grads_ref, strict=True):
        if g_ref is None:
            assert g_fast is None or torch.count_nonzero(g_fast) == 0
        else:
            torch.testing.assert_close(g_fast, g_ref, rtol=1e-4, atol=1e-6)


def test_block_diagonal_has_no_cross_modality_gradient() -> None:
    fast = MemoryFusionNetwork([2, 2], [3, 4], memory=3, attention_hidden=4,
                               attention_dropout=0.0, gate_hidden=4, gate_dropout=0.0)
    weight = fast.recurrent_matrix()
    assert weight.shape == (7, 28)
    # Rows of modality 0 (0..2) feed only modality 0's columns in each gate block.
    for g in range(4):
        block = weight[:3, g * 7 + 3 : (g + 1) * 7]
        assert torch.count_nonzero(block) == 0


def test_overfits_a_tiny_batch() -> None:
    torch.manual_seed(0)
    sizes = {"a": 4, "b": 3}
    config = make_config()
    model = MFM(config, sizes)
    inputs, lengths = random_inputs(sizes, batch=8, steps=5, seed=3)
    target = torch.linspace(-2, 2, 8)
    loss_cfg = LossConfig(lambda_mmd=0.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)

    def loss_now() -> torch.Tensor:
        out = model(inputs, lengths)
        return objective_terms(out, inputs, lengths, target, loss_cfg, config.output)["loss"]

    first = loss_now().item()
    for _ in range(300):
        optimizer.zero_grad()
        loss = loss_now()
        loss.backward()
        optimizer.step()
    assert loss_now().item() < first / 10


def test_input_errors_name_the_modality() -> None:
    model = MFM(make_config(), {"a": 3, "b": 2})
    with pytest.raises(ValueError, match="missing modality 'b'"):
        model({"a": torch.randn(2, 4, 3)})
    with pytest.raises(ValueError, match="modality 'a'"):
        model({"a": torch.randn(2, 4, 5), "b": torch.randn(2, 4, 2)})
    with pytest.raises(ValueError, match="invalid modality name"):
        MFM(make_config(), {"a.b": 3})
    with pytest.raises(ValueError, match="auto"):
        MFM(dataclasses.replace(make_config(), output=OutputConfig()), {"a": 3})
