"""`mfm interpret`: factor gradients checked against finite differences, groups, reliance,
and the command on a tiny fitted checkpoint."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from mfm.cli import app
from mfm.config import MFMConfig, resolve_output, with_overrides
from mfm.data import load
from mfm.data.batch import step_mask
from mfm.engine import MFMModule
from mfm.interpret import factor_jacobian_norms, interpret, write_report
from mfm.run import fit

SPEC = "synthetic:n_train=48,n_valid=12,n_test=12,steps=1/6,dims=64/3,modalities=2,offset=3"
TINY_MODEL = {
    "default_modality": {"hidden": 6, "z": 3, "f": 3, "decoder_hidden": 5},
    "zy": 4, "fy": 4, "memory": 5, "attention_hidden": 8, "gate_hidden": 8, "mfn_steps": 3,
}


def tiny_config(spec: str = SPEC, **train: object) -> MFMConfig:
    config = MFMConfig.from_dict({"data": {"spec": spec}, "model": TINY_MODEL,
                                  "train": {"batch_size": 16, "max_epochs": 1,
                                            "modality_dropout": {"m1": 0.3, "m2": 0.3}}})
    return with_overrides(config, **train)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run fitted for one epoch; returns its best checkpoint."""
    out = tmp_path_factory.mktemp("interpret-fit") / "run"
    result = fit(tiny_config(), out, progress=False)
    return result.best_checkpoint


def double_module(spec: str) -> tuple[MFMModule, object]:
    """An untrained tiny module and its data, both in float64."""
    config = resolve_output(tiny_config(spec), "regression", 1)
    data = load(spec)
    torch.manual_seed(0)
    module = MFMModule(config.to_dict(), data.info.input_sizes, data.normalization).double()
    module.eval()
    for split in data.splits.values():
        split.features = {k: v.double() for k, v in split.features.items()}
    return module, data


def finite_difference_norms(decoder: torch.nn.Module, f_y: torch.Tensor, f_m: torch.Tensor,
                            steps: int, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Frobenius norms of d X^[b,t,:] / d F_y[b] and / d F_m[b] by central differences."""

    def columns(which: int) -> torch.Tensor:
        base = [f_y, f_m]
        out = []
        for j in range(base[which].shape[1]):
            plus, minus = [b.clone() for b in base], [b.clone() for b in base]
            plus[which][:, j] += eps
            minus[which][:, j] -= eps
            with torch.no_grad():
                high = decoder(torch.cat(plus, 1), steps)
                low = decoder(torch.cat(minus, 1), steps)
            out.append((high - low) / (2 * eps))  # (B, T, d)
        return torch.stack(out)  # (P, B, T, d)

    return (columns(0).square().sum(dim=(0, 3)).sqrt(),
            columns(1).square().sum(dim=(0, 3)).sqrt())


def test_jacobian_norms_match_finite_differences() -> None:
    module, _ = double_module(SPEC)
    decoder = module.model.decoders["m2"]
    generator = torch.Generator().manual_seed(1)
    f_y = torch.randn(5, 4, generator=generator, dtype=torch.float64)
    f_m = torch.randn(5, 3, generator=generator, dtype=torch.float64)
    g_y, g_m = factor_jacobian_norms(decoder, f_y, f_m, 6)
    fd_y, fd_m = finite_difference_norms(decoder, f_y, f_m, 6)
    assert g_y.shape == g_m.shape == (5, 6)
    torch.testing.assert_close(g_y, fd_y, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(g_m, fd_m, rtol=1e-6, atol=1e-9)


def test_report_shares_match_finite_differences_and_skip_padded_steps(tmp_path: Path) -> None:
    spec = SPEC + ",ragged=true,min_fraction=0.3"
    module, data = double_module(spec)
    test = data["test"]
    # No sample keeps the last step of m2: that step must be reported as missing.
    test.lengths["m2"] = test.lengths["m2"].clamp(max=5)
    test.features["m2"] = test.features["m2"] * step_mask(test.lengths["m2"], 6).unsqueeze(-1)
    report = interpret(module, data, max_samples=10, seed=3, chunk=4)
    assert report.samples == 10

    # The same quantities from scratch, by finite differences on the encoders' factors.
    index = torch.randperm(12, generator=torch.Generator().manual_seed(3))[:10].sort().values
    batch = test.collate(index.tolist())
    model = module.model
    with torch.no_grad():
        z_y, z = model.encode(batch.inputs, batch.lengths)
        f_y = model.g_y(z_y)
    for name in model.names:
        with torch.no_grad():
            f_m = model.g[name](z[name])
        steps = batch.inputs[name].shape[1]
        fd_y, fd_m = finite_difference_norms(model.decoders[name], f_y, f_m, steps)
        valid = step_mask(batch.lengths[name], steps).double()
        count = valid.sum(0)
        per_step = report.factors[name]["per_step"]["all"]
        for t in range(steps):
            if count[t] == 0:
                assert per_step["share_fy"][t] is None and per_step["n_valid"][t] == 0
                continue
            a = float((fd_y[:, t] * valid[:, t]).sum() / count[t])
            b = float((fd_m[:, t] * valid[:, t]).sum() / count[t])
            assert per_step["grad_fy"][t] == pytest.approx(a, rel=1e-6)
            assert per_step["grad_fm"][t] == pytest.approx(b, rel=1e-6)
            assert per_step["share_fy"][t] == pytest.approx(a / (a + b), rel=1e-6)
        a = float((fd_y * valid).sum() / valid.sum())
        b = float((fd_m * valid).sum() / valid.sum())
        assert report.factors[name]["summary"]["all"]["share_fy"] == pytest.approx(
            a / (a + b), rel=1e-6)
    assert report.factors["m2"]["per_step"]["all"]["share_fy"][5] is None

    # Regression: tertiles of the target; every analysed sample is in one bin.
    assert report.grouping.startswith("3 quantile bins")
    assert list(report.groups)[0] == "all"
    assert sum(v for k, v in report.groups.items() if k != "all") == 10
    # Reliance: gradient x input shares sum to 1; removal results for every modality.
    shares = [report.reliance[n]["grad_x_input_share"] for n in model.names]
    assert sum(shares) == pytest.approx(1.0)
    assert all("metric_drop" in report.reliance[n] for n in model.names)

    paths = write_report(report, tmp_path)
    document = json.loads(paths["json"].read_text())
    assert document["factors"]["m2"]["per_step"]["all"]["share_fy"][5] is None
    rows = list(csv.DictReader(paths["csv"].open()))
    missing = [r for r in rows if r["section"] == "factor_step" and r["modality"] == "m2"
               and r["group"] == "all" and r["step"] == "5"]
    assert missing and missing[0]["share_fy"] == "" and missing[0]["n_valid"] == "0"
    assert paths["png"].stat().st_size > 10_000


def test_classification_groups_by_true_class() -> None:
    config = resolve_output(tiny_config(SPEC + ",task=classification,num_classes=3"),
                            "classification", 3)
    data = load(config.data.spec)
    torch.manual_seed(0)
    module = MFMModule(config.to_dict(), data.info.input_sizes, data.normalization)
    report = interpret(module, data, max_samples=12)
    assert report.grouping == "true class" and report.metric == "accuracy"
    assert list(report.groups) == ["all", "class 0", "class 1", "class 2"]
    assert sum(report.groups.values()) == 24


def test_cli_interpret_writes_its_files(fitted: Path, tmp_path: Path) -> None:
    out = tmp_path / "interp"
    result = CliRunner().invoke(app, ["interpret", "--checkpoint", str(fitted), "--output",
                                      str(out), "--max-samples", "8"])
    assert result.exit_code == 0, result.output
    for name in ("interpret.json", "interpret.csv", "interpret.png"):
        assert (out / name).stat().st_size > 0
    assert "share of F_y" in result.stdout
    assert json.loads((out / "interpret.json").read_text())["samples"] == 8


def test_cli_interpret_bad_checkpoint_is_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["interpret", "--checkpoint", str(tmp_path / "nope.ckpt"),
                                      "--output", str(tmp_path / "o")])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "nope.ckpt" in lines[0]
    assert not (tmp_path / "o").exists()
