"""Scale out and never lose work: DDP, kill-and-resume, atomic and safe checkpoints,
pickle-free export, numerical faults and batch prediction."""

from __future__ import annotations

import csv
import json
import os
import pickle
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mfm import MFM
from mfm.config import MFMConfig, with_overrides
from mfm.run import AtomicCheckpointIO, RunError, evaluate, export, fit, load_module
from tests.test_cli import MFM as MFM_SCRIPT
from tests.test_cli import assert_one_line_error, run
from tests.test_engine import TINY, tiny_config


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_ddp_two_processes_write_one_set_of_outputs(tmp_path: Path) -> None:
    # With the progress bar on (rank 0 alone reads the logged metrics at epoch end) and
    # DWA (every rank reads the epoch losses): the processes' collectives must still pair.
    config = write_yaml(tmp_path / "tiny.yaml", {**TINY, "loss": {"weighting": "dwa"},
                                                 "train": {**TINY["train"], "max_epochs": 3}})
    result = run("fit", "--config", str(config), "--output", "ddp", "--devices", "2",
                 "--strategy", "ddp", "--accelerator", "cpu", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "ddp"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert len(list(tmp_path.rglob("metrics.json"))) == 1
    assert len(list(tmp_path.rglob("config.yaml"))) == 1
    metrics = json.loads((out / "metrics.json").read_text())
    # Metrics cover the whole test split once, as a single process computes them.
    assert evaluate(out / "checkpoints" / "best.ckpt") == pytest.approx(metrics, abs=1e-6)


RESUME_DATA = "synthetic:n_train=800,n_valid=64,n_test=64,steps=12,dims=6/4,modalities=2"


def resume_config() -> dict:
    return {**TINY, "data": {"spec": RESUME_DATA},
            "train": {"batch_size": 16, "max_epochs": 4, "patience": 10}}


def test_resume_in_process_equals_uninterrupted(tmp_path: Path) -> None:
    config = MFMConfig.from_dict(resume_config())
    straight = fit(config, tmp_path / "straight", progress=False)
    fit(with_overrides(config, max_epochs=2), tmp_path / "split", progress=False)
    resumed = fit(config, tmp_path / "split", resume=True, progress=False)
    assert resumed.metrics == straight.metrics


def test_sigkill_then_resume_gives_the_same_metrics(tmp_path: Path) -> None:
    config = write_yaml(tmp_path / "c.yaml", resume_config())
    straight = run("fit", "--config", str(config), "--output", "straight", "--no-progress",
                   cwd=tmp_path)
    assert straight.returncode == 0, straight.stderr
    process = subprocess.Popen(
        [MFM_SCRIPT, "fit", "--config", str(config), "--output", "killed", "--no-progress"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    last = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    deadline = time.time() + 180
    while not last.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert last.exists(), "the run ended before its first checkpoint"
    assert not (tmp_path / "killed" / "metrics.json").exists(), "killed too late"
    resumed = run("fit", "--resume", "killed", "--no-progress", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    first = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    second = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    assert second == first


def test_resume_without_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.yaml").write_text(yaml.safe_dump(TINY))
    assert_one_line_error(run("fit", "--resume", "empty", cwd=tmp_path), "last.ckpt")


def test_checkpoint_writes_are_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"a": torch.ones(3)}, target)
    before = target.read_bytes()

    def broken_save(obj: object, handle: object) -> None:
        handle.write(b"half a checkpoint")  # type: ignore[attr-defined]
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        io.save_checkpoint({"a": torch.zeros(3)}, target)
    assert target.read_bytes() == before  # the old checkpoint is intact
    assert io.load_checkpoint(target)["a"].tolist() == [1.0, 1.0, 1.0]


class Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


def test_tampered_and_corrupt_checkpoints_are_refused(tmp_path: Path) -> None:
    result = fit(tiny_config(max_epochs=1), tmp_path / "run", progress=False)
    marker = tmp_path / "pwned"
    checkpoint = torch.load(result.best_checkpoint, weights_only=True)
    checkpoint["hyper_parameters"]["extra"] = Payload(marker)
    tampered = tmp_path / "tampered.ckpt"
    with tampered.open("wb") as handle:
        torch.save(checkpoint, handle, pickle_protocol=pickle.HIGHEST_PROTOCOL)
    with pytest.raises(RunError, match="not a readable mfm checkpoint"):
        load_module(tampered)
    assert_one_line_error(run("evaluate", "--checkpoint", str(tampered), cwd=tmp_path),
                          "tampered.ckpt")
    assert not marker.exists()
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(result.best_checkpoint.read_bytes()[:2000])
    assert_one_line_error(run("evaluate", "--checkpoint", str(corrupt), cwd=tmp_path),
                          "corrupt.ckpt", "not a readable mfm checkpoint")


def test_safetensors_round_trip_is_exact(tmp_path: Path) -> None:
    result = fit(tiny_config(max_epochs=1), tmp_path / "run", progress=False)
    folder = export(result.best_checkpoint, tmp_path / "export")
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.yaml", "model.json", "model.safetensors", "normalization.json"]
    for file in folder.iterdir():  # no pickle anywhere
        assert not file.read_bytes().startswith(b"\x80"), file
    module = load_module(result.best_checkpoint)
    model = MFM.from_pretrained(folder)
    original = module.model.state_dict()
    loaded = model.state_dict()
    assert original.keys() == loaded.keys()
    assert all(torch.equal(original[k], loaded[k]) for k in original)
    again = model.save_pretrained(tmp_path / "again")
    assert torch.equal(MFM.from_pretrained(again).state_dict()["to_zy.weight"],
                       original["to_zy.weight"])
    assert evaluate(folder) == result.metrics
    evaluated = run("evaluate", "--model", str(folder), "--output", "e.json", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads((tmp_path / "e.json").read_text()) == result.metrics


def test_forced_nan_stops_with_a_message(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 32), ("valid", 8), ("test", 8)):
        arrays[f"{split}/x"] = rng.standard_normal((n, 5, 3)).astype(np.float32)
        arrays[f"{split}/labels"] = rng.standard_normal(n).astype(np.float32)
    arrays["train/x"][:, 2, 1] = 1e30
    np.savez(tmp_path / "huge.npz", **arrays)
    result = run("fit", "--data", "huge.npz", "--no-normalize", "--output", "out",
                 "--no-progress", cwd=tmp_path)
    assert result.returncode == 3, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: training stopped: loss term ")
    assert "at epoch 0" in lines[-1] and "Traceback" not in result.stderr


def test_predict_writes_one_row_per_sample(tmp_path: Path) -> None:
    config = MFMConfig.from_dict(
        {**TINY, "data": {"spec": TINY["data"]["spec"] + ",task=classification,num_classes=3"}}
    )
    result = fit(config, tmp_path / "run", progress=False)
    export(result.best_checkpoint, tmp_path / "model")
    out = run("predict", "--model", "model", "--out", "p.csv", "--split", "all",
              "--no-progress", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    with (tmp_path / "p.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 64 + 16 + 16
    assert set(rows[0]) == {"split", "index", "id", "target", "predicted_class", "prob_0",
                            "prob_1", "prob_2"}
    assert rows[0]["id"] == "train-0"
    total = sum(float(rows[5][f"prob_{k}"]) for k in range(3))
    assert total == pytest.approx(1.0, abs=1e-5)
    test_rows = [r for r in rows if r["split"] == "test"]
    accuracy = np.mean([r["predicted_class"] == r["target"] for r in test_rows])
    assert accuracy == pytest.approx(result.metrics["accuracy"], abs=1e-6)
