"""Baselines and ablations chosen by ``model.kind``: each learns, has exactly its parts,
and goes through the same engine, export and robustness code as the MFM."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mfm.config import ConfigError, MFMConfig, resolve_output
from mfm.data import load
from mfm.engine import MFMModule
from mfm.losses import objective_terms
from mfm.losses.objective import missing_terms
from mfm.model import MFM
from mfm.model.baselines import KINDS
from mfm.robustness import evaluate as robustness_evaluate
from mfm.run import evaluate, export, fit, load_module
from tests.test_cli import assert_one_line_error, run
from tests.test_engine import TINY

ALL_KINDS = list(KINDS)

# Unequal lengths per modality: the MFN and early fusion use the resampled step grid.
LEARN = {
    "data": {"spec": "synthetic:n_train=200,n_valid=40,n_test=60,modalities=2,steps=8/6,"
                     "dims=6/5,shared_dim=2,noise=0.3,seed=3"},
    "model": {"default_modality": {"hidden": 8, "z": 4, "f": 4}, "zy": 8, "fy": 8,
              "memory": 8, "attention_hidden": 8, "gate_hidden": 8, "mfn_steps": 6},
    "train": {"batch_size": 40, "max_epochs": 8, "learning_rate": 1e-2},
}


def config_for(kind: str, base: dict | None = None, **train: object) -> MFMConfig:
    data = {**(base or LEARN)}
    data["model"] = {**data["model"], "kind": kind}
    data["train"] = {**data["train"], **train}
    return MFMConfig.from_dict(data)


@pytest.mark.parametrize("kind", [k for k in ALL_KINDS if k != "mfm"])
def test_every_baseline_and_ablation_beats_predicting_the_mean(kind: str,
                                                               tmp_path: Path) -> None:
    config = config_for(kind)
    data = load(config.data)
    train, test = data["train"].target, data["test"].target
    mean_mae = float((test - train.mean()).abs().mean())  # predicting the training mean
    result = fit(config, tmp_path / kind, progress=False)
    assert result.metrics["MAE"] < 0.9 * mean_mae, (kind, result.metrics["MAE"], mean_mae)


def _outputs(kind: str, dropout: float = 0.0):
    config = resolve_output(config_for(kind, TINY, default_modality_dropout=dropout),
                            "regression", 1)
    data = load(config.data)
    torch.manual_seed(0)
    module = MFMModule(config.to_dict(), data.info.input_sizes)
    batch = data["train"].collate(range(8))
    return config, module, batch


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_objective_has_exactly_the_terms_the_engine_lists(kind: str) -> None:
    config, module, batch = _outputs(kind)
    output = module.model(batch.inputs, batch.lengths)
    terms = objective_terms(output, batch.inputs, batch.lengths, batch.target, config.loss,
                            config.model.output)
    assert [k for k in terms if k != "loss"] == module.term_names()
    parts = KINDS[kind]
    names = module.model.names
    assert set(output.reconstructions) == (set(names) if parts.decoder_input else set())
    assert set(output.z) == (set(names) if parts.modality_factors else set())
    assert output.z_y.shape == (8, 0 if parts.zy_encoder is None else config.model.zy)
    assert output.f_y.shape == (8, config.model.fy)
    assert torch.isfinite(terms["loss"])
    terms["loss"].backward()


@pytest.mark.parametrize("kind", ["mfm-no-zy", "mfm-zy-only", "mfm-disc"])
def test_ablations_train_their_surrogate_path(kind: str) -> None:
    config, module, batch = _outputs(kind, dropout=0.5)
    assert module.term_names()[-2:] == ["missing", "recon_missing"]
    full = module.model(batch.inputs, batch.lengths)
    torch.manual_seed(1)
    removed = module.removal_mask(batch)
    assert removed is not None
    kept = {n: torch.where(removed[n], 0, batch.lengths[n]) for n in batch.lengths}
    dropped = module.model(batch.inputs, kept)
    terms = missing_terms(full, dropped, removed, batch.inputs, batch.lengths, config.loss)
    assert float(terms["missing"].detach()) > 0
    (terms["missing"] + terms["recon_missing"]).backward()


@pytest.mark.parametrize("kind", ["mfn", "ef-lstm", "lf"])
def test_baselines_refuse_modality_dropout_and_mask_absent_modalities(kind: str) -> None:
    with pytest.raises(ConfigError, match="train.default_modality_dropout: expected 0 with "
                       f"model.kind '{kind}'"):
        config_for(kind, default_modality_dropout=0.3)
    _, module, batch = _outputs(kind)
    model = module.model.eval()
    lengths = {**batch.lengths, "m2": torch.where(torch.arange(8) % 2 == 0, 0,
                                                  batch.lengths["m2"])}
    base = model(batch.inputs, lengths).prediction
    poisoned = {**batch.inputs, "m2": torch.where((lengths["m2"] > 0).view(-1, 1, 1),
                                                  batch.inputs["m2"], float("nan"))}
    torch.testing.assert_close(model(poisoned, lengths).prediction, base)


def test_unknown_kind_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="model.kind: expected one of 'mfm', 'mfn'"):
        config_for("tfn")
    assert_one_line_error(run("fit", "--model", "tfn", "--output", "never", cwd=tmp_path),
                          "--model", "model.kind", "'ef-lstm'")
    assert not (tmp_path / "never").exists()


def test_baseline_export_round_trip_and_robustness(tmp_path: Path) -> None:
    config = config_for("ef-lstm", TINY, max_epochs=1)
    result = fit(config, tmp_path / "run", progress=False)
    folder = export(result.best_checkpoint, tmp_path / "export")
    module = load_module(result.best_checkpoint)
    model = MFM.from_pretrained(folder)
    assert model.config.kind == "ef-lstm" and model.fusion is not None and model.mfn is None
    original, loaded = module.model.state_dict(), model.state_dict()
    assert original.keys() == loaded.keys()
    assert all(torch.equal(original[k], loaded[k]) for k in original)
    assert evaluate(folder) == result.metrics
    data = load(config.data, stats=module.normalization)
    report = robustness_evaluate(module, data, levels=(0.0, 0.5))
    surrogate = [r for r in report.subsets if r["variant"] == "surrogate"]
    assert len(surrogate) == 3 and not any(k.startswith("recon_") for r in surrogate for k in r)
