"""The ``mfm`` console script, run as a user runs it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.test_engine import TINY

MFM = shutil.which("mfm", path=str(Path(sys.executable).parent)) or shutil.which("mfm")


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert MFM, "the mfm console script is not installed"
    env = {**os.environ, "COLUMNS": "120"}
    return subprocess.run([MFM, *args], cwd=cwd, capture_output=True, text=True, env=env,
                          timeout=240)


@pytest.fixture
def tiny_yaml(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


def test_fit_then_evaluate_through_the_console_script(tmp_path: Path, tiny_yaml: Path) -> None:
    fitted = run("fit", "--config", str(tiny_yaml), "--output", "out", "--max-epochs", "2",
                 "--seed", "3", "--batch-size", "8", "--no-progress", cwd=tmp_path)
    assert fitted.returncode == 0, fitted.stderr
    assert "Corr" in fitted.stdout and "Non0_acc_2" in fitted.stdout
    out = tmp_path / "out"
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["train"]["batch_size"] == 8 and config["train"]["seed"] == 3
    assert config["model"]["output"]["kind"] == "regression"
    metrics = json.loads((out / "metrics.json").read_text())
    evaluated = run("evaluate", "--checkpoint", str(out / "checkpoints" / "best.ckpt"),
                    "--output", "eval.json", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads((tmp_path / "eval.json").read_text()) == metrics
    assert "MAE" in evaluated.stdout


@pytest.mark.parametrize("command", [[], ["fit"], ["evaluate"], ["config"]])
def test_help_explains_itself(tmp_path: Path, command: list[str]) -> None:
    result = run(*command, "--help", cwd=tmp_path)
    assert result.returncode == 0
    assert "Usage" in result.stdout
    if command == ["fit"]:
        for option in ("--config", "--data", "--output", "--max-epochs", "--seed",
                       "--batch-size"):
            assert option in result.stdout


def test_config_command_prints_a_usable_config(tmp_path: Path) -> None:
    result = run("config", "--preset", "mosi-mmsa", cwd=tmp_path)
    assert result.returncode == 0
    assert yaml.safe_load(result.stdout)["loss"]["lambda_mmd"] == 100.0


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_bad_config_fails_cleanly_and_writes_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  zy: lots\n")
    result = run("fit", "--config", str(bad), "--output", "never", cwd=tmp_path)
    assert_one_line_error(result, "bad.yaml", "model.zy", "expected an integer")
    assert not (tmp_path / "never").exists()


def test_bad_data_spec_and_unknown_preset(tmp_path: Path) -> None:
    result = run("fit", "--data", "synthetic:modalities=0", "--output", "never", cwd=tmp_path)
    assert_one_line_error(result, "modalities")
    assert not (tmp_path / "never").exists()
    result = run("fit", "--config", "mosi-nothing", cwd=tmp_path)
    assert_one_line_error(result, "not a preset name")


def test_foreign_checkpoint_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "fake.ckpt"
    fake.write_bytes(b"this is not a checkpoint")
    assert_one_line_error(run("evaluate", "--checkpoint", str(fake), cwd=tmp_path),
                          "fake.ckpt", "not a readable mfm checkpoint")
    assert_one_line_error(run("evaluate", "--checkpoint", "missing.ckpt", cwd=tmp_path),
                          "no such checkpoint")
