"""``mfm compare``: every model with every seed, a mean ± std table, and resuming."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml

from mfm.compare import CompareError, RunEvent, compare
from mfm.config import MFMConfig, with_overrides
from tests.test_cli import assert_one_line_error, run
from tests.test_engine import TINY

TINY_ONE_EPOCH = {**TINY, "train": {**TINY["train"], "max_epochs": 1}}


def test_compare_writes_the_tables_and_skips_finished_runs(tmp_path: Path) -> None:
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY_ONE_EPOCH))
    args = ("compare", "--config", "tiny.yaml", "--models", "lf,ef-lstm", "--seeds", "1,2",
            "--output", "cmp")
    first = run(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    out = tmp_path / "cmp"
    for name in ("results.md", "results.csv", "results.png"):
        assert (out / name).stat().st_size > 0, name
    rows = list(csv.DictReader((out / "results.csv").open()))
    by_model = {(r["model"], r["metric"]): r for r in rows}
    for model in ("lf", "ef-lstm"):
        assert by_model[(model, "MAE")]["seeds"] == "2"
        assert float(by_model[(model, "MAE")]["std"]) >= 0
    assert by_model[("constant-training-mean", "MAE")]["seeds"] == "0"
    table = (out / "results.md").read_text()
    assert "| lf | 2 |" in table and "| ef-lstm | 2 |" in table and " ± " in table
    assert "4 run(s) trained now" in first.stdout
    checkpoints = sorted(out.glob("*/seed-*/checkpoints/last.ckpt"))
    assert len(checkpoints) == 4
    stamps = [p.stat().st_mtime_ns for p in checkpoints]
    again = run(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "0 run(s) trained now" in again.stdout and again.stdout.count("kept") == 4
    assert [p.stat().st_mtime_ns for p in checkpoints] == stamps
    assert (out / "results.md").read_text() == table


def test_unfinished_runs_are_resumed_or_restarted(tmp_path: Path) -> None:
    config = MFMConfig.from_dict(TINY_ONE_EPOCH)
    out = tmp_path / "cmp"
    first = compare(config, ["lf"], [1, 2], out)
    assert first.trained == 2
    (out / "lf" / "seed-1" / "metrics.json").unlink()  # killed after its last checkpoint
    for name in ("checkpoints", "logs"):  # killed before its first checkpoint
        for path in sorted((out / "lf" / "seed-2" / name).rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
    (out / "lf" / "seed-2" / "metrics.json").unlink()
    events: list[RunEvent] = []
    second = compare(config, ["lf"], [1, 2], out, report=events.append)
    actions = {(e.seed, e.state): e.action for e in events}
    assert actions[(1, "done")] == "resumed" and actions[(2, "done")] == "restarted"
    assert second.trained == 2
    assert second.runs == first.runs  # deterministic: the same metrics again


def test_bad_arguments_and_changed_settings_are_refused(tmp_path: Path) -> None:
    assert_one_line_error(run("compare", "--models", "mfm,tfn", "--output", "never",
                              cwd=tmp_path), "--models", "unknown model 'tfn'")
    assert_one_line_error(run("compare", "--seeds", "1,two", "--output", "never",
                              cwd=tmp_path), "--seeds", "'1,two'")
    assert not (tmp_path / "never").exists()
    config = MFMConfig.from_dict(TINY_ONE_EPOCH)
    compare(config, ["ef-lstm"], [3], tmp_path / "cmp")
    with pytest.raises(CompareError, match="train.max_epochs: 1 there, 2 now"):
        compare(with_overrides(config, max_epochs=2), ["ef-lstm"], [3], tmp_path / "cmp")
    with pytest.raises(CompareError, match="listed twice"):
        compare(config, ["lf"], [1, 1], tmp_path / "other")
    assert not (tmp_path / "other").exists()
