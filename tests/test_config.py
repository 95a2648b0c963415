"""Configuration: defaults, YAML round trip, presets and validation messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from mfm.config import (
    ConfigError,
    MFMConfig,
    load_config,
    resolve_output,
    save_config,
    with_overrides,
)

PRESETS = Path(__file__).resolve().parents[1] / "src" / "mfm" / "presets"


def test_round_trip(tmp_path: Path) -> None:
    config = MFMConfig.from_dict(
        {"model": {"modalities": {"eeg": {"hidden": 5, "z": 3}}, "zy": 7},
         "loss": {"recon_weights": {"eeg": 0.25}}, "train": {"learning_rate": 3e-4}}
    )
    save_config(config, tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml")
    assert again == config
    assert again.model.modality("eeg").hidden == 5
    assert again.model.modality("anything").hidden == config.model.default_modality.hidden
    assert again.loss.recon_weight("eeg") == 0.25
    assert again.loss.recon_weight("other") == 1.0


@pytest.mark.parametrize("name", ["mosi-original", "mosi-mmsa"])
def test_presets_load(name: str) -> None:
    config = load_config(PRESETS / f"{name}.yaml")
    assert set(config.model.modalities) == {"text", "audio", "vision"}
    assert config.loss.recon_weight("audio") == 0.01


def test_preset_values_match_the_reference_configurations() -> None:
    original = load_config(PRESETS / "mosi-original.yaml")
    sizes = {n: (m.hidden, m.z, m.f, m.dropout) for n, m in original.model.modalities.items()}
    assert sizes == {"text": (88, 32, 88, 0.2), "audio": (64, 8, 8, 0.2),
                     "vision": (48, 80, 8, 0.7)}
    assert (original.model.zy, original.model.fy, original.model.memory) == (32, 16, 64)
    mmsa = load_config(PRESETS / "mosi-mmsa.yaml")
    assert mmsa.loss.lambda_mmd == 100.0 and mmsa.train.batch_size == 64
    assert mmsa.train.weight_decay == 1e-3


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("model: {zyy: 3}", "c.yaml: model.zyy: unknown key"),
        ("model: {zy: three}", "c.yaml: model.zy: expected an integer, found str 'three'"),
        ("model: {zy: 0}", "c.yaml: model.zy: expected >= 1, found 0"),
        ("train: {learning_rate: fast}", "c.yaml: train.learning_rate: expected a number"),
        ("loss: {mmd_kernel: gauss}", "c.yaml: loss.mmd_kernel: expected one of 'seed'"),
        ("model: {modalities: {text: {hidden: -1}}}",
         "c.yaml: model.modalities.text.hidden: expected >= 1"),
        ("model: {modalities: {text: {width: 3}}}",
         "c.yaml: model.modalities.text.width: unknown key"),
        ("train: 5", "c.yaml: train: expected a mapping"),
        ("oops: 1", "c.yaml: oops: unknown key"),
        ("model: [1, 2", "c.yaml: not valid YAML"),
    ],
)
def test_errors_name_file_key_and_expectation(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config("/nonexistent/config.yaml")


def test_overrides_and_output_resolution() -> None:
    config = with_overrides(MFMConfig(), data_spec="synthetic:modalities=2", max_epochs=3,
                            seed=None)
    assert config.train.max_epochs == 3 and config.train.seed == 0
    assert config.data.spec == "synthetic:modalities=2"
    with pytest.raises(ConfigError, match="train.batch_size"):
        with_overrides(MFMConfig(), batch_size=0)
    resolved = resolve_output(MFMConfig(), "classification", 4)
    assert (resolved.model.output.kind, resolved.model.output.size) == ("classification", 4)
    with pytest.raises(ConfigError, match="kind: auto"):
        resolve_output(resolved, "regression", 1)
