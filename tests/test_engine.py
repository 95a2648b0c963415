"""Training engine: the optimiser really uses the configured rate, runs are reproducible,
and the default synthetic task is learned."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mfm.config import MFMConfig, load_config, resolve_output, with_overrides
from mfm.data import load
from mfm.engine import MFMModule
from mfm.losses import objective_terms
from mfm.run import RunError, evaluate, fit

TINY = {
    "data": {"spec": "synthetic:n_train=64,n_valid=16,n_test=16,steps=6,dims=3/2,modalities=2"},
    "model": {
        "default_modality": {"hidden": 6, "z": 3, "f": 3},
        "zy": 4, "fy": 4, "memory": 5, "attention_hidden": 8, "gate_hidden": 8,
    },
    "train": {"batch_size": 16, "max_epochs": 2},
}


def tiny_config(**train: object) -> MFMConfig:
    return with_overrides(MFMConfig.from_dict(TINY), **train)


def first_step_update(learning_rate: float) -> torch.Tensor:
    config = resolve_output(tiny_config(learning_rate=learning_rate), "regression", 1)
    data = load(config.data.spec)
    torch.manual_seed(0)
    module = MFMModule(config.to_dict(), data.info.input_sizes)
    optimizer = module.configure_optimizers()["optimizer"]
    assert optimizer.param_groups[0]["lr"] == learning_rate
    before = [p.detach().clone() for p in module.parameters()]
    batch = data["train"].collate(range(16))
    torch.manual_seed(1)
    out = module(batch)
    terms = objective_terms(out, batch.inputs, batch.lengths, batch.target,
                            config.loss, config.model.output)
    terms["loss"].backward()
    optimizer.step()
    return torch.cat([(p.detach() - b).flatten() for p, b in zip(module.parameters(), before,
                                                                   strict=True)])


def test_learning_rate_is_applied() -> None:
    slow = first_step_update(1e-4)
    fast = first_step_update(1e-2)
    assert not torch.allclose(slow, fast)
    # Adam's first step moves each weight by about lr (sign of its gradient).
    moved = slow.abs() > 0
    ratio = (fast.abs()[moved] / slow.abs()[moved]).median()
    assert 90 < float(ratio) < 110


def test_same_seed_same_metrics_and_config_reuse(tmp_path: Path) -> None:
    first = fit(tiny_config(seed=5), tmp_path / "a", progress=False)
    again = fit(tiny_config(seed=5), tmp_path / "b", progress=False)
    assert first.metrics == again.metrics
    other = fit(tiny_config(seed=6), tmp_path / "c", progress=False)
    assert other.metrics != first.metrics
    # The written config reproduces the run.
    reused = fit(load_config(tmp_path / "a" / "config.yaml"), tmp_path / "d", progress=False)
    assert reused.metrics == first.metrics


def test_fit_writes_everything_and_evaluate_agrees(tmp_path: Path) -> None:
    result = fit(tiny_config(), tmp_path / "run", progress=False)
    out = tmp_path / "run"
    for name in ("config.yaml", "metrics.json", "curves.png", "checkpoints/best.ckpt",
                 "checkpoints/last.ckpt", "logs/metrics.csv"):
        assert (out / name).is_file(), name
    written = json.loads((out / "metrics.json").read_text())
    assert set(written) >= {"MAE", "Corr", "Non0_acc_2", "valid/MAE", "valid/Corr"}
    again = evaluate(result.best_checkpoint)
    assert again == result.metrics
    header = (out / "logs" / "metrics.csv").read_text().splitlines()[0].split(",")
    for column in ("train/loss", "train/pred", "train/recon_m1", "train/mmd_zy",
                   "train/mmd_za_m2", "valid/loss", "valid/MAE", "lr-Adam"):
        assert column in header


def test_output_directory_is_not_reused(tmp_path: Path) -> None:
    fit(tiny_config(max_epochs=1), tmp_path / "run", progress=False)
    with pytest.raises(RunError, match="already holds a run"):
        fit(tiny_config(max_epochs=1), tmp_path / "run", progress=False)
    fit(tiny_config(max_epochs=1), tmp_path / "run", progress=False, overwrite=True)


def test_classification_run(tmp_path: Path) -> None:
    config = MFMConfig.from_dict(
        {**TINY, "data": {"spec": TINY["data"]["spec"] + ",task=classification,num_classes=3"}}
    )
    result = fit(config, tmp_path / "cls", progress=False)
    assert {"accuracy", "f1_weighted", "recall_class_0", "valid/accuracy"} <= set(result.metrics)


def test_default_synthetic_task_is_learned(tmp_path: Path) -> None:
    """A short run of the defaults: well above chance, far below the mean predictor."""
    result = fit(with_overrides(MFMConfig(), max_epochs=4), tmp_path / "default",
                 progress=False)
    data = load("synthetic")
    mean = data["train"].target.mean()
    mean_mae = float((data["test"].target - mean).abs().mean())
    assert result.metrics["Corr"] > 0.8
    assert result.metrics["MAE"] < 0.5 * mean_mae
