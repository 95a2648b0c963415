"""Plots of a run: training curves from the CSV log."""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_epoch_log(path: Path) -> dict[str, dict[int, float]]:
    """Read Lightning's CSV log into ``column -> {epoch: value}`` (empty cells skipped)."""
    series: dict[str, dict[int, float]] = defaultdict(dict)
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            epoch_text = row.get("epoch")
            if not epoch_text:
                continue
            epoch = int(float(epoch_text))
            for key, value in row.items():
                if key in ("epoch", "step") or value in (None, ""):
                    continue
                series[key][epoch] = float(value)
    return dict(series)


def plot_training_curves(log: Path, out: Path) -> Path | None:
    """Draw loss terms (train and validation) and validation metrics over epochs.

    Left panel: every ``train/`` and ``valid/`` loss term on a log scale; right panel:
    the validation metrics (with several targets: their means, and each target's MAE or
    accuracy dotted). Returns the PNG path, or ``None`` when the log is missing.
    """
    if not log.is_file():
        return None
    series = read_epoch_log(log)
    terms = ("loss", "pred", "recon_", "mmd_", "missing")
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    names = sorted({k.partition("/")[2] for k in series if k.startswith(("train/", "valid/"))})
    colours = {name: f"C{i % 10}" for i, name in enumerate(names)}
    for key in sorted(series):
        stage, _, name = key.partition("/")
        points = sorted(series[key].items())
        if not points or stage not in ("train", "valid") or key.startswith("weight/"):
            continue
        xs, ys = zip(*points, strict=True)
        if name.startswith(terms):
            if any(y <= 0 or math.isnan(y) for y in ys):
                continue
            style = "-" if stage == "train" else "--"
            label = name if stage == "train" else None
            left.plot(xs, ys, style, color=colours[name], label=label)
        elif stage == "valid":
            target, _, metric = name.rpartition("/")
            if target and metric not in ("MAE", "accuracy"):
                continue  # per-target metrics: only the main one, beside the means
            right.plot(xs, ys, ":" if target else "-", color=colours[name], label=name)
    left.set_yscale("log")
    left.set_xlabel("epoch")
    left.set_ylabel("loss term (log scale)")
    left.set_title("Objective terms (raw): solid = train, dashed = validation")
    right.set_xlabel("epoch")
    right.set_ylabel("metric value")
    right.set_title("Validation metrics")
    for axis in (left, right):
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_loss_weights(log: Path, out: Path) -> Path | None:
    """Draw each term's effective weight per epoch (the ``weight/`` columns of the log).

    Returns the PNG path, or ``None`` when the log has no weights.
    """
    if not log.is_file():
        return None
    series = {k: v for k, v in read_epoch_log(log).items() if k.startswith("weight/")}
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, key in enumerate(sorted(series)):
        xs, ys = zip(*sorted(series[key].items()), strict=True)
        ax.plot(xs, ys, marker="o", markersize=3, color=f"C{i % 10}", label=key[len("weight/"):])
    ax.set_xlabel("epoch")
    ax.set_ylabel("weight (multiplier of the raw term)")
    ax.set_yscale("log")
    ax.set_title("Loss weights over epochs")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
