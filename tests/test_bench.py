"""Smoke tests of the benchmark scripts: each ``bench/<name>.py --quick`` runs and ends with
its machine-readable lines (values are not checked: quick numbers are not measurements)."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
VENV_PYTHON = REPO / ".venv" / "bin" / "python"
PYTHON = str(VENV_PYTHON) if VENV_PYTHON.exists() else sys.executable

# script -> the keys of its last lines, in order
EXPECTED_TAIL = {
    "mmd.py": ["mmd_peak_memory_ratio_seed_over_mfm", "mmd_time_ratio_seed_over_mfm"],
    "train.py": ["epoch_time_ratio_mmsa_over_mfm", "peak_rss_ratio_mmsa_over_mfm"],
    "infer.py": ["infer_samples_per_s_batch256"],
}
LINE = re.compile(r"^(?P<key>[a-z0-9_]+)=(?P<value>\S+)$")


def _scripts() -> list[str]:
    return sorted(p.name for p in BENCH.glob("*.py") if not p.name.startswith("_"))


def test_every_script_is_covered() -> None:
    assert _scripts() == sorted(EXPECTED_TAIL)


def _run(args: list[str], tmp_path: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    # One thread: a quick run is a smoke test, and one thread stays fast when other
    # processes share the CPUs (busy-waiting OpenMP threads do not).
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TQDM_DISABLE": "1"})
    return subprocess.run([PYTHON, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("script", sorted(EXPECTED_TAIL))
def test_help(script: str, tmp_path: Path) -> None:
    proc = _run([str(BENCH / script), "--help"], tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--quick" in proc.stdout


@pytest.mark.parametrize("script", sorted(EXPECTED_TAIL))
def test_quick_run(script: str, tmp_path: Path) -> None:
    out = tmp_path / f"{script}.json"
    proc = _run([str(BENCH / script), "--quick", "--threads", "1", "--out", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "not measurements" in proc.stdout
    assert out.is_file()
    lines = proc.stdout.strip().splitlines()
    keys = EXPECTED_TAIL[script]
    tail = lines[-len(keys):]
    for key, line in zip(keys, tail, strict=True):
        match = LINE.match(line)
        assert match is not None, f"not a key=value line: {line!r}"
        assert match["key"] == key
        value = float(match["value"])  # "nan" parses (train.py without MMSA)
        assert math.isnan(value) or value > 0
