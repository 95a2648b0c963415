"""Loss weighting inside training: every strategy trains, logs its weights and plots them."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from mfm.config import MFMConfig
from mfm.run import fit, load_module
from tests.test_engine import TINY


def weighted_config(kind: str, **loss: object) -> MFMConfig:
    return MFMConfig.from_dict({**TINY, "loss": {"weighting": kind, **loss},
                                "train": {**TINY["train"], "max_epochs": 3}})


@pytest.mark.parametrize("kind", ["uncertainty", "gradnorm", "dwa"])
def test_each_strategy_trains_and_logs_weights(tmp_path: Path, kind: str) -> None:
    result = fit(weighted_config(kind), tmp_path / kind, progress=False)
    assert all(v == v for k, v in result.metrics.items() if k in ("MAE", "Corr"))
    with (tmp_path / kind / "logs" / "metrics.csv").open() as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("weight/pred")]
    assert len(rows) == 3  # one row of weights per epoch
    assert {"weight/pred", "weight/recon_m1", "weight/mmd_zy"} <= set(rows[0])
    # MMD terms stay on their fixed lambda whatever the strategy.
    assert all(float(r["weight/mmd_zy"]) == 1.0 for r in rows)
    assert (tmp_path / kind / "weights.png").stat().st_size > 0
    module = load_module(result.last_checkpoint)
    if kind == "gradnorm":
        weights = torch.stack(list(module.weighting.loss_weights.parameters()))
        assert (weights > 0).all()
        assert float(weights.sum()) == pytest.approx(len(module.weighting.names), rel=1e-5)


def test_uncertainty_parameters_are_trained_without_weight_decay(tmp_path: Path) -> None:
    result = fit(weighted_config("uncertainty"), tmp_path / "u", progress=False)
    module = load_module(result.last_checkpoint)
    optimizer = module.configure_optimizers()["optimizer"]
    learnable = {id(p) for p in module.weighting.parameters()}
    groups = [g for g in optimizer.param_groups if any(id(p) in learnable for p in g["params"])]
    assert len(groups) == 1 and groups[0]["weight_decay"] == 0.0
    values = torch.cat([p.detach().flatten() for p in module.weighting.parameters()])
    assert (values != 0).all()  # moved away from their initial 0 during training


def test_fixed_weighting_uses_the_configured_lambdas(tmp_path: Path) -> None:
    config = MFMConfig.from_dict({**TINY, "loss": {"recon_weights": {"m1": 0.25},
                                                   "lambda_mmd": 3.0},
                                  "train": {**TINY["train"], "max_epochs": 1}})
    fit(config, tmp_path / "f", progress=False)
    with (tmp_path / "f" / "logs" / "metrics.csv").open() as handle:
        row = next(r for r in csv.DictReader(handle) if r.get("weight/pred"))
    assert float(row["weight/recon_m1"]) == 0.25
    assert float(row["weight/recon_m2"]) == 1.0
    assert float(row["weight/mmd_za_m1"]) == 3.0
