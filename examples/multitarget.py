"""Several targets, one of them pure noise: automatic loss weights against equal weights.

The synthetic data set with three regression targets: ``y1`` and ``y2`` are driven by the
factor every modality shares (values in [-3, 3]), ``noise1`` is independent of everything
and on another scale (standard deviation ``--noise-scale``, 10); 20 % of each target's
labels are missing (NaN). Every target is trained with the MSE loss (``--loss``), so the
noise target's large, irreducible error dominates equal weights. Every weighting
strategy trains the same MFM for the same number of epochs with the same seeds (learned
weights at ``--weighting-lr``); the table reports the clean targets' test MAE and Corr
(their mean over ``y1`` and ``y2``), mean +- standard deviation over the seeds.
Finished runs are kept: rerunning the script only trains what is missing.

    python examples/multitarget.py [--seeds 1,2,3] [--weightings fixed,uncertainty,gradnorm]
                                   [--output runs/multitarget] [--figure docs/multitarget.png]
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import statistics
from pathlib import Path

from mfm.config import MFMConfig, with_overrides
from mfm.run import fit

DATA = ("synthetic:targets=3,noise_targets=1,missing_labels=0.2,n_train=1500,n_valid=300,"
        "n_test=300,noise_scale={scale}")
CLEAN = ("y1", "y2")


def run_one(weighting: str, seed: int, output: Path, args: argparse.Namespace
            ) -> dict[str, float]:
    """Train one strategy with one seed (or read the finished run)."""
    metrics_file = output / "metrics.json"
    if metrics_file.exists():
        return json.loads(metrics_file.read_text())
    config = with_overrides(MFMConfig(), data_spec=DATA.format(scale=args.noise_scale),
                            seed=seed, max_epochs=args.epochs)
    model = config.model
    kind, _, alpha = weighting.partition(":")
    loss = dataclasses.replace(config.loss, weighting=kind, weighting_lr=args.weighting_lr)
    if alpha:
        loss = dataclasses.replace(loss, gradnorm_alpha=float(alpha))
    config = dataclasses.replace(
        config,
        model=dataclasses.replace(model, output=dataclasses.replace(model.output,
                                                                    loss=args.loss)),
        loss=loss,
    )
    return fit(config, output, overwrite=True, progress=False).metrics


def clean_scores(metrics: dict[str, float]) -> dict[str, float]:
    """Mean over the clean targets of the test MAE and Corr."""
    return {key: statistics.fmean(metrics[f"{t}/{key}"] for t in CLEAN)
            for key in ("MAE", "Corr")}


def weight_curves(run: Path) -> dict[str, list[float]]:
    """Term -> per-epoch weight of the prediction terms, from the run's CSV log."""
    curves: dict[str, list[float]] = {}
    with (run / "logs" / "metrics.csv").open() as handle:
        for row in csv.DictReader(handle):
            for key, value in row.items():
                if key.startswith("weight/pred_") and value:
                    curves.setdefault(key[len("weight/"):], []).append(float(value))
    return curves


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--weightings", default="fixed,uncertainty,gradnorm,gradnorm:0",
                        help="strategies to compare; gradnorm:A sets GradNorm's alpha to A")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--noise-scale", type=float, default=10.0,
                        help="standard deviation of the noise target")
    parser.add_argument("--loss", default="mse", choices=["l1", "mse"],
                        help="regression loss of every target")
    parser.add_argument("--weighting-lr", type=float, default=0.02,
                        help="learning rate of the learned weights")
    parser.add_argument("--output", type=Path, default=Path("runs/multitarget"))
    parser.add_argument("--figure", type=Path, default=Path("docs/multitarget.png"))
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    weightings = args.weightings.split(",")
    scores: dict[str, list[dict[str, float]]] = {}
    for weighting in weightings:
        for seed in seeds:
            metrics = run_one(weighting, seed, args.output / weighting / f"seed-{seed}", args)
            scores.setdefault(weighting, []).append(clean_scores(metrics))
            print(f"{weighting} seed {seed}: {scores[weighting][-1]}", flush=True)

    lines = ["| weighting | clean targets' test MAE | clean targets' test Corr | seeds |",
             "| --- | --- | --- | --- |"]
    for weighting, rows in scores.items():
        cells = []
        for key in ("MAE", "Corr"):
            values = [r[key] for r in rows]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.fmean(values):.3f} ± {sd:.3f}")
        name = weighting.replace(":", " (alpha = ") + (")" if ":" in weighting else "")
        lines.append(f"| {name} | {cells[0]} | {cells[1]} | {len(rows)} |")
    table = "\n".join(lines)
    print(table)
    (args.output / "results.md").write_text(table + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (bars, curves) = plt.subplots(1, 2, figsize=(10, 3.8))
    means = [statistics.fmean(r["MAE"] for r in scores[w]) for w in weightings]
    sds = [statistics.stdev([r["MAE"] for r in scores[w]]) if len(scores[w]) > 1 else 0.0
           for w in weightings]
    labels = [w.replace(":", "\nalpha=") for w in weightings]
    bars.bar(labels, means, yerr=sds, capsize=4, color="#4c72b0")
    bars.set_ylabel("test MAE, mean of y1 and y2 (lower is better)")
    bars.set_title(f"clean targets, {len(seeds)} seeds (error bar: sd)")
    bars.set_ylim(0, max(m + s for m, s in zip(means, sds, strict=True)) * 1.15)
    if "uncertainty" in weightings:
        for term, values in weight_curves(args.output / "uncertainty" /
                                          f"seed-{seeds[0]}").items():
            curves.plot(range(1, len(values) + 1), values, marker=".", label=term)
        curves.set_xlabel("epoch")
        curves.set_ylabel("weight of the term (0.5 exp(-s))")
        curves.set_title(f"uncertainty weights, seed {seeds[0]}")
        curves.legend()
    fig.text(0.01, 0.01, "Left: lower is better. Right: the noise target's weight falls as "
             "its loss stays high; the clean targets gain weight.", fontsize=8)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    args.figure.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.figure, dpi=90)
    print(f"figure written to {args.figure}")


if __name__ == "__main__":
    main()
