"""Missing modalities: presence masks, surrogate inference, training with gaps, and the
robustness report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mfm.config import MFMConfig, resolve_output, with_overrides
from mfm.data import DataConfig, load
from mfm.engine import MFMModule
from mfm.model import MFM
from mfm.model.mfn import aligned_view
from mfm.run import fit, load_module, robustness
from tests.test_cli import run
from tests.test_engine import TINY
from tests.test_model import make_config, random_inputs
from tests.test_shared_data import MFN, needs_mfn


def test_absent_modality_is_never_read() -> None:
    torch.manual_seed(0)
    sizes = {"a": 3, "b": 4, "c": 2}
    model = MFM(make_config(), sizes).eval()
    inputs, lengths = random_inputs(sizes, batch=5, steps=6)
    lengths["b"] = torch.tensor([0, 3, 0, 6, 0])
    base = model(inputs, lengths)
    for garbage in (torch.randn(5, 6, 4) * 1e6, torch.full((5, 6, 4), float("nan"))):
        poisoned = {**inputs, "b": torch.where(lengths["b"].view(-1, 1, 1) > 0,
                                               inputs["b"], garbage)}
        out = model(poisoned, lengths)
        torch.testing.assert_close(out.prediction, base.prediction)
        torch.testing.assert_close(out.z_y, base.z_y)
        for name in sizes:
            torch.testing.assert_close(out.z[name], base.z[name])
            torch.testing.assert_close(out.reconstructions[name], base.reconstructions[name])


def test_absent_modality_factor_comes_from_the_surrogate() -> None:
    torch.manual_seed(0)
    sizes = {"a": 3, "b": 4}
    model = MFM(make_config(), sizes).eval()
    inputs, lengths = random_inputs(sizes, batch=4, steps=5)
    gone = {**lengths, "b": torch.zeros(4, dtype=torch.long)}
    z_y, z = model.encode(inputs, gone)
    state = model.surrogate_mfn(*aligned_view([inputs["a"], inputs["b"] * 0],
                                               [gone["a"], gone["b"]], "aligned", 5))
    torch.testing.assert_close(z["b"], model.surrogates["b"](state))
    torch.testing.assert_close(z_y, model.surrogate_to_zy(state))
    z_full, own = model.encode(inputs, lengths)  # complete samples: the main path
    torch.testing.assert_close(own["a"], z["a"])
    assert not torch.allclose(z_full, z_y)


def test_removal_mask_respects_data_and_keeps_one() -> None:
    config = MFMConfig.from_dict({**TINY, "train": {"default_modality_dropout": 0.9}})
    config = resolve_output(config, "regression", 1)
    data = load(config.data)
    module = MFMModule(config.to_dict(), data.info.input_sizes)
    batch = data["train"].collate(range(64))
    batch.lengths["m2"][:10] = 0  # absent in the data
    torch.manual_seed(0)
    removed = module.removal_mask(batch)
    assert removed is not None
    assert not removed["m2"][:10].any()  # nothing to remove where the data has nothing
    kept = torch.stack([(batch.lengths[n] > 0) & ~removed[n] for n in removed], dim=1)
    assert kept.any(dim=1).all()
    assert removed["m1"].float().mean() > 0.3  # the probability is applied


def test_surrogate_inference_beats_zero_filling(tmp_path: Path) -> None:
    """Every modality carries the shared factor; m3 is a noisy function of what m1 and m2
    carry. Trained with modality dropout, the model predicts from m1 + m2 far better with
    m3 absent (surrogate inference) than with m3 zero-filled (the paper's baseline)."""
    config = MFMConfig.from_dict({
        "data": {"spec": "synthetic:n_train=800,n_valid=200,n_test=300,offset=3"},
        "train": {"max_epochs": 6, "default_modality_dropout": 0.3, "seed": 0},
    })
    result = fit(config, tmp_path / "run", progress=False)
    report, paths = robustness(result.best_checkpoint, tmp_path / "rb")
    rows = {(r["present"], r["variant"]): r for r in report.subsets}
    surrogate = rows[("m1+m2", "surrogate")]["MAE"]
    zeros = rows[("m1+m2", "zeros")]["MAE"]
    assert surrogate < zeros - 0.15, (surrogate, zeros)
    assert rows[("m1", "surrogate")]["MAE"] < rows[("m1", "zeros")]["MAE"] - 0.1
    # The surrogate pass rebuilds m3 better than predicting zeros (the training mean).
    assert rows[("m1+m2", "surrogate")]["recon_m3"] < 1.0
    assert json.loads(paths["json"].read_text())["metric"] == "MAE"


@pytest.mark.parametrize("modalities", [2, 3])
def test_subset_table_and_files(tmp_path: Path, modalities: int) -> None:
    spec = f"synthetic:n_train=48,n_valid=16,n_test=16,steps=5,modalities={modalities}"
    config = with_overrides(MFMConfig.from_dict({**TINY, "data": {"spec": spec}}),
                            max_epochs=1)
    result = fit(config, tmp_path / "run", progress=False)
    out = run("robustness", "--checkpoint", str(result.best_checkpoint), "--output", "rb",
              cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / "rb" / "robustness.json").read_text())
    assert len({r["present"] for r in report["subsets"]}) == 2**modalities - 1
    for name in ("json", "csv", "md", "png"):
        assert (tmp_path / "rb" / f"robustness.{name}").stat().st_size > 0
    assert len(report["curves"]) == modalities * 3 * 10
    assert "surrogate" in out.stdout


@needs_mfn
def test_training_with_a_modality_missing_for_a_whole_split(tmp_path: Path) -> None:
    config = with_overrides(MFMConfig(), data_spec=str(MFN / "youtube"), max_epochs=2)
    result = fit(config, tmp_path / "yt", progress=False)
    module = load_module(result.best_checkpoint).eval()
    data = load(DataConfig(spec=str(MFN / "youtube")), stats=module.normalization)
    batch = data["test"].full_batch()
    assert int((batch.lengths["text"] > 0).sum()) > 0  # text is present on test
    with torch.no_grad():
        base = module.model(batch.inputs, batch.lengths).prediction
        shifted = {**batch.inputs, "text": batch.inputs["text"] + 1.0}
        moved = module.model(shifted, batch.lengths).prediction
    assert not torch.allclose(base, moved)  # the model reads text where it is present
