"""`mfm generate`: the image rule, grid sizes, undoing the normalisation, and the command on
a tiny fitted checkpoint."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.image import imread
from typer.testing import CliRunner

from mfm.cli import app
from mfm.config import ConfigError, DataConfig, MFMConfig, resolve_output, with_overrides
from mfm.data import load
from mfm.engine import MFMModule
from mfm.generate import (
    BOTTOM,
    LEFT,
    MIN_WIDTH,
    PAD,
    RIGHT,
    TILE,
    TOP,
    _raw,
    generate,
    grid_pixels,
    image_spec,
    parse_images,
    parse_steps,
)
from mfm.run import fit

# m1: one step of 64 = 8 x 8 "pixels" (offset 3 keeps its means positive); m2: a sequence.
SPEC = "synthetic:n_train=48,n_valid=12,n_test=12,steps=1/6,dims=64/3,modalities=2,offset=3"
TINY_MODEL = {
    "default_modality": {"hidden": 6, "z": 3, "f": 3, "decoder_hidden": 5},
    "zy": 4, "fy": 4, "memory": 5, "attention_hidden": 8, "gate_hidden": 8, "mfn_steps": 3,
}


def tiny_config() -> MFMConfig:
    config = MFMConfig.from_dict({"data": {"spec": SPEC}, "model": TINY_MODEL,
                                  "train": {"batch_size": 16, "max_epochs": 1}})
    return with_overrides(config, default_modality_dropout=0.3)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("generate-fit") / "run"
    return fit(tiny_config(), out, progress=False).best_checkpoint


def tiny_module() -> tuple[MFMModule, object]:
    config = resolve_output(tiny_config(), "regression", 1)
    data = load(SPEC)
    torch.manual_seed(0)
    return MFMModule(config.to_dict(), data.info.input_sizes, data.normalization), data


def test_image_rule() -> None:
    positive = {"mean": [0.5] * 28, "std": [1.0] * 28}
    negative = {"mean": [-3.0] * 20, "std": [1.0] * 20}
    assert image_spec("x", 1, 64, None).shape == (8, 8)  # flattened 8 x 8
    assert image_spec("x", 1, 784, {"mean": [0.1] * 784, "std": [1.0] * 784}).shape == (28, 28)
    assert image_spec("x", 28, 28, positive).shape == (28, 28)  # rows as steps
    assert image_spec("x", 20, 20, negative).shape is None  # a log-spectrogram
    assert image_spec("x", 4, 16, None).shape is None  # square total, but not rows
    assert image_spec("x", 1, 49, None).shape is None  # 7 x 7 is too small
    assert image_spec("x", 6, 3, None).shape is None
    assert image_spec("x", 4, 16, None, {"x": (4, 16)}).shape == (4, 16)
    assert image_spec("x", 28, 28, positive, {"x": None}).shape is None
    with pytest.raises(ConfigError, match="x=5x5: 25 pixels.*64 values"):
        image_spec("x", 4, 16, None, {"x": (5, 5)})
    assert parse_images(["a=28x28", "b=off"]) == {"a": (28, 28), "b": None}
    assert parse_steps(["a=3"]) == {"a": 3}
    for bad in ("a", "a=28", "=2x2", "a=0x3", "a=2xb"):
        with pytest.raises(ConfigError, match="--image"):
            parse_images([bad])
    with pytest.raises(ConfigError, match="--steps"):
        parse_steps(["a=0"])


def test_grid_pixels_follow_the_layout() -> None:
    # 8 x 8 images are scaled by ceil(TILE / 8) = 6 to 48-pixel tiles.
    scale = math.ceil(TILE / 8)
    assert grid_pixels(3, 4, 8, 8) == (TOP + 3 * 8 * scale + 4 * PAD + BOTTOM,
                                       max(MIN_WIDTH, LEFT + 4 * 8 * scale + 5 * PAD + RIGHT))
    # 28 x 28 images are scaled by 2; a 3 x 8 grid is wider than the minimum.
    assert grid_pixels(3, 8, 28, 28) == (TOP + 3 * 56 + 4 * PAD + BOTTOM,
                                         LEFT + 8 * 56 + 9 * PAD + RIGHT)
    assert LEFT + 8 * 56 + 9 * PAD + RIGHT > MIN_WIDTH


def test_generate_writes_grids_and_plots(tmp_path: Path) -> None:
    module, data = tiny_module()
    result = generate(module, tmp_path, data, n=3, columns=4, seed=1)
    summary = json.loads((tmp_path / "generate.json").read_text())
    assert summary["modalities"]["m1"]["kind"] == "image"
    assert summary["modalities"]["m1"]["image_shape"] == [8, 8]
    assert summary["modalities"]["m2"]["kind"] == "sequence"
    assert set(summary["reconstruction_mse"]) == {"m1", "m2"}
    names = {p.name for p in result.files}
    assert names == {"m1-vary-za.png", "m1-vary-zy.png", "m1-reconstruction.png",
                     "m2-prior.png", "m2-reconstruction.png", "generate.json"}
    tile = 8 * math.ceil(TILE / 8)
    for name, rows, columns in (("m1-vary-za.png", 3, 4), ("m1-vary-zy.png", 3, 4),
                                ("m1-reconstruction.png", 3, 3)):  # input, rebuilt, absent
        image = imread(tmp_path / name)
        height = TOP + rows * tile + (rows + 1) * PAD + BOTTOM
        width = max(MIN_WIDTH, LEFT + columns * tile + (columns + 1) * PAD + RIGHT)
        assert image.shape[:2] == (height, width), name
        # The grid sits at (TOP, LEFT): white padding first, then the first tile.
        assert np.allclose(image[TOP, LEFT:LEFT + 10, :3], 1.0)
        first = image[TOP + PAD:TOP + PAD + tile, LEFT + PAD:LEFT + PAD + tile, :3]
        assert np.allclose(first[..., 0], first[..., 1])  # grey levels
        assert not np.allclose(first, 1.0)
    for name in ("m2-prior.png", "m2-reconstruction.png"):
        assert imread(tmp_path / name).shape[0] > 100


def test_generate_undoes_the_normalisation() -> None:
    module, data = tiny_module()
    raw = load(DataConfig(spec=SPEC, normalize=False))
    stats = module.normalization["m2"]
    back = _raw(data["test"].features["m2"], stats)
    valid = raw["test"].lengths["m2"]
    for i in range(3):
        n = int(valid[i])
        np.testing.assert_allclose(back[i, :n], raw["test"].features["m2"][i, :n].numpy(),
                                   rtol=1e-5, atol=1e-5)


def test_cli_generate(fitted: Path, tmp_path: Path) -> None:
    out = tmp_path / "gen"
    result = CliRunner().invoke(app, ["generate", "--checkpoint", str(fitted), "--output",
                                      str(out), "--n", "2", "--columns", "3"])
    assert result.exit_code == 0, result.output
    assert "m1: image 8x8" in result.stdout
    assert imread(out / "m1-vary-za.png").shape[:2] == grid_pixels(2, 3, 8, 8)
    assert (out / "m2-reconstruction.png").is_file()
    # Prior samples only (no data read), with m2 forced to an image.
    prior = tmp_path / "prior"
    result = CliRunner().invoke(app, ["generate", "--checkpoint", str(fitted), "--output",
                                      str(prior), "--n", "2", "--steps", "m1=1", "--steps",
                                      "m2=6", "--image", "m2=2x9"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in prior.iterdir()) == [
        "generate.json", "m1-vary-za.png", "m1-vary-zy.png", "m2-vary-za.png",
        "m2-vary-zy.png"]
    assert imread(prior / "m2-vary-za.png").shape[:2] == grid_pixels(2, 8, 2, 9)


@pytest.mark.parametrize("args", [
    ["--checkpoint", "missing.ckpt"],
    ["--image", "m1=3x3"],
    ["--image", "m9=8x8"],
    ["--steps", "m1=x"],
])
def test_cli_generate_errors_are_one_line(fitted: Path, tmp_path: Path, args: list[str]) -> None:
    if args[0] != "--checkpoint":
        args = ["--checkpoint", str(fitted), *args]
    else:
        args = ["--checkpoint", str(tmp_path / args[1])]
    out = tmp_path / "never"
    result = CliRunner().invoke(app, ["generate", *args, "--output", str(out)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert not out.exists()
