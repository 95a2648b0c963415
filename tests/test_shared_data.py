"""Real data from ../shared/data: YouTube and ICT-MMMO (MFN h5) and AV-MNIST (built from
FSDD and MNIST) load as documented and train for two epochs."""

from __future__ import annotations

from pathlib import Path

import pytest

from mfm.config import DataConfig, MFMConfig, with_overrides
from mfm.data import DataWarning, load
from mfm.run import fit

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
MFN = SHARED / "mfn"
needs_mfn = pytest.mark.skipif(not (MFN / "youtube").is_dir() or not (MFN / "mmmo").is_dir(),
                               reason=f"shared MFN data not found at {MFN}")
needs_avmnist = pytest.mark.skipif(
    not (SHARED / "fsdd" / "recordings").is_dir() or not (SHARED / "mnist").is_dir(),
    reason=f"shared FSDD/MNIST data not found under {SHARED}",
)


@needs_mfn
@pytest.mark.parametrize(("name", "sizes"), [("youtube", (173, 36, 60)), ("mmmo", (220, 40, 80))])
def test_mfn_folders_load_with_text_missing_from_train(name: str, sizes: tuple[int, ...]) -> None:
    with pytest.warns(DataWarning, match="text missing from the train split"):
        data = load(DataConfig(spec=str(MFN / name), threshold=3.5 if name == "mmmo" else None))
    assert data.info.input_sizes == {"audio": 74, "video": 36, "text": 300}
    assert [len(data[s]) for s in ("train", "valid", "test")] == list(sizes)
    assert data.info.kind == "classification"
    assert data.info.num_classes == (3 if name == "youtube" else 2)
    assert int(data["train"].lengths["text"].max()) == 0  # absent on every train sample
    for split in ("valid", "test"):
        assert int((data[split].lengths["text"] > 0).sum()) > 0
    for split in ("train", "valid", "test"):
        for modality in ("audio", "video"):
            assert int((data[split].lengths[modality] > 0).sum()) > 0


@needs_mfn
@pytest.mark.parametrize("name", ["youtube", "mmmo"])
def test_two_epochs_on_mfn_data(tmp_path: Path, name: str) -> None:
    config = with_overrides(
        MFMConfig(), data_spec=str(MFN / name), max_epochs=2,
        data={"modalities": ["audio", "video"], "threshold": 3.5 if name == "mmmo" else None},
    )
    result = fit(config, tmp_path / name, progress=False)
    assert 0.0 <= result.metrics["accuracy"] <= 1.0
    assert (tmp_path / name / "checkpoints" / "best.ckpt").is_file()


@needs_avmnist
def test_two_epochs_on_avmnist(tmp_path: Path) -> None:
    from mfm.data.avmnist import write_avmnist

    out = tmp_path / "avmnist.npz"
    sizes = write_avmnist(SHARED / "fsdd" / "recordings", SHARED / "mnist", out, progress=False)
    assert sizes == {"train": 2430, "valid": 270, "test": 300}
    config = with_overrides(MFMConfig(), data_spec=str(out), max_epochs=2)
    result = fit(config, tmp_path / "run", progress=False)
    assert result.metrics["accuracy"] > 0.12  # ten classes: chance is 0.1
