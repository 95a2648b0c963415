"""Compare models (``model.kind``) over several seeds on one data set: ``mfm compare``.

Every (model, seed) pair is one :func:`mfm.run.fit` run with the same configuration except
``model.kind`` and ``train.seed``; the output folder holds::

    <model>/seed-<s>/   the run (config.yaml, checkpoints/, logs/, metrics.json, curves.png)
    results.md          test metrics, mean ± standard deviation over seeds, per model
    results.csv         one row per (model, metric): model, metric, mean, std, seeds
    results.png         the main metrics as bars (mean) with error bars (std)

The table also has a reference row that needs no training: predicting the training mean
(regression) or the training split's majority class (classification), when the data has
a single target. The standard deviation is the sample standard deviation over seeds (0
with one seed).

Resuming: a run whose ``metrics.json`` exists is kept and not trained again; a run with
``checkpoints/last.ckpt`` but no ``metrics.json`` (killed) is continued with the fit's resume
support; a folder with other leftovers is cleared and the run restarted. A finished run
whose saved configuration differs from the one asked for is refused (``overwrite`` trains it
again), so a table never mixes settings.
"""

from __future__ import annotations

import csv
import io
import math
import re
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

from mfm.config import ConfigError, MFMConfig, ModelKind, load_config

MAIN_METRICS = {
    "regression": ("MAE", "Corr", "Has0_acc_2", "Non0_acc_2", "Non0_F1_score", "Mult_acc_7"),
    "classification": ("accuracy", "f1_weighted", "f1_macro"),
}
"""Columns of the main table in ``results.md`` (every metric is in the second table)."""

PLOT_METRICS = {
    "regression": ("MAE", "Corr", "Non0_acc_2"),
    "classification": ("accuracy", "f1_weighted", "f1_macro"),
}
"""Panels of ``results.png``."""

LOWER_IS_BETTER = ("MAE",)

MODEL_KINDS: tuple[str, ...] = get_args(ModelKind)


class CompareError(ValueError):
    """Bad arguments for a comparison (one-line message)."""


def parse_models(text: str) -> list[str]:
    """``"mfm,mfn"`` -> ``["mfm", "mfn"]``; CompareError on an unknown or repeated name."""
    models = [m.strip() for m in text.split(",") if m.strip()]
    if not models:
        raise CompareError(f"--models: expected a comma-separated list of {', '.join(MODEL_KINDS)}"
                           f", found {text!r}")
    for model in models:
        if model not in MODEL_KINDS:
            raise CompareError(f"--models: unknown model {model!r} (expected some of: "
                               f"{', '.join(MODEL_KINDS)})")
    if len(set(models)) != len(models):
        raise CompareError(f"--models: a model is listed twice in {text!r}")
    return models


def parse_seeds(text: str) -> list[int]:
    """``"1,2,3"`` -> ``[1, 2, 3]``; CompareError unless distinct non-negative integers."""
    parts = [s.strip() for s in text.split(",") if s.strip()]
    if not parts or not all(re.fullmatch(r"\d+", p) for p in parts):
        raise CompareError(f"--seeds: expected comma-separated non-negative integers such as "
                           f"1,2,3, found {text!r}")
    seeds = [int(p) for p in parts]
    if len(set(seeds)) != len(seeds):
        raise CompareError(f"--seeds: a seed is listed twice in {text!r}")
    return seeds


def data_name(spec: str) -> str:
    """A short name for a data spec: ``synthetic[:...]`` as given, else the path's stem."""
    if spec.split(":", 1)[0] == "synthetic":
        return spec
    path = Path(spec.rstrip("/"))
    return path.stem or spec


def slug(name: str) -> str:
    """A folder name for ``name`` (letters, digits, ``.``, ``_``, ``-`` and ``=``)."""
    return re.sub(r"[^A-Za-z0-9._=-]+", "-", name).strip("-") or "data"


@dataclass
class RunEvent:
    """Progress of one (model, seed) run, for a progress display.

    Attributes:
        index: 1-based position among ``total`` runs.
        state: ``start`` (training begins; ``action`` says how), ``done`` (trained now),
            ``kept`` (finished before, not trained again) or ``failed``.
        action: ``new``, ``resumed`` or ``restarted`` (for ``start`` and ``done``).
    """

    index: int
    total: int
    model: str
    seed: int
    path: Path
    state: str
    action: str = "new"
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    epochs: int | None = None
    message: str = ""


@dataclass
class Summary:
    """Mean, standard deviation and number of seeds of one metric of one model."""

    mean: float
    std: float
    seeds: int


@dataclass
class CompareResult:
    """What :func:`compare` produced.

    Attributes:
        output: the comparison folder.
        runs: model -> seed -> test metrics of the finished runs.
        failed: ``(model, seed, message)`` of runs that stopped on a non-finite loss.
        table: model -> metric -> :class:`Summary` (reference row included).
        trained: how many runs were trained (or continued) by this call.
        files: ``md``, ``csv`` and ``png`` paths.
    """

    output: Path
    runs: dict[str, dict[int, dict[str, float]]]
    failed: list[tuple[str, int, str]]
    table: dict[str, dict[str, Summary]]
    trained: int
    files: dict[str, Path]


def run_config(base: MFMConfig, kind: str, seed: int) -> MFMConfig:
    """``base`` with ``model.kind`` and ``train.seed`` set (validated)."""
    merged = base.to_dict()
    merged["model"]["kind"] = kind
    merged["train"]["seed"] = seed
    return MFMConfig.from_dict(merged, source=f"--models {kind}")


def _first_difference(saved: Any, wanted: Any, key: str = "") -> str | None:
    if isinstance(saved, dict) and isinstance(wanted, dict):
        for k in list(wanted) + [k for k in saved if k not in wanted]:
            found = _first_difference(saved.get(k), wanted.get(k), f"{key}.{k}" if key else k)
            if found:
                return found
        return None
    if saved != wanted:
        return f"{key}: {saved!r} there, {wanted!r} now"
    return None


def _read_metrics(path: Path) -> dict[str, float]:
    import json

    raw = json.loads(path.read_text())
    return {k: (math.nan if v is None else float(v)) for k, v in raw.items()
            if not k.startswith("valid/")}


def reference_row(data: Any) -> tuple[str, dict[str, float]] | None:
    """Test metrics of a constant prediction from the training split: the mean label
    (regression) or the majority class (classification); ``None`` with several targets."""
    import torch

    from mfm.data.batch import label_mask
    from mfm.metrics import classification_metrics, regression_metrics

    kinds = data.info.target_kinds()
    if len(kinds) != 1:
        return None
    kind, num_classes = next(iter(kinds.values()))
    train, test = data["train"].target, data["test"].target
    if train is None or test is None:
        return None
    train, test = train[label_mask(train)], test[label_mask(test)]
    if not len(train) or not len(test):
        return None
    if kind == "classification":
        guess = torch.full_like(test, int(train.long().bincount().argmax()))
        return "constant: majority class", classification_metrics(guess, test, num_classes)
    guess = torch.full_like(test, float(train.double().mean()), dtype=torch.float32)
    return "constant: training mean", regression_metrics(guess, test.float())


def summarise(runs: dict[str, dict[int, dict[str, float]]]) -> dict[str, dict[str, Summary]]:
    """model -> metric -> mean, sample standard deviation (0 for one seed) and seed count;
    NaN values are left out."""
    table: dict[str, dict[str, Summary]] = {}
    for model, by_seed in runs.items():
        metrics: dict[str, Summary] = {}
        names: list[str] = []
        for values in by_seed.values():
            names += [k for k in values if k not in names]
        for name in names:
            values = [v[name] for v in by_seed.values()
                      if name in v and not math.isnan(v[name])]
            if not values:
                metrics[name] = Summary(math.nan, math.nan, 0)
                continue
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            metrics[name] = Summary(statistics.fmean(values), std, len(values))
        table[model] = metrics
    return table


def _cell(s: Summary | None, spread: bool = True) -> str:
    if s is None or math.isnan(s.mean):
        return "-"
    return f"{s.mean:.3f} ± {s.std:.3f}" if spread else f"{s.mean:.3f}"


def _main(kind: str, metrics: Sequence[str], choice: dict[str, tuple[str, ...]]) -> list[str]:
    wanted = [m for m in choice.get(kind, ()) if m in metrics]
    return wanted or list(metrics)[:6]


def write_markdown(table: dict[str, dict[str, Summary]], reference: tuple[str, dict] | None,
                   kind: str, title: str, description: str) -> str:
    """The ``results.md`` text: the main metrics per model, then every metric."""
    models = list(table)
    metrics: list[str] = []
    for model in models:
        metrics += [k for k in table[model] if k not in metrics]
    main = _main(kind, metrics, MAIN_METRICS)
    seeds = {m: max((s.seeds for s in table[m].values()), default=0) for m in models}
    lines = [f"# Model comparison: {title}", "", description, "",
             "| model | seeds | " + " | ".join(main) + " |",
             "| --- | ---: |" + " ---: |" * len(main)]
    for model in models:
        lines.append(f"| {model} | {seeds[model]} | "
                     + " | ".join(_cell(table[model].get(m)) for m in main) + " |")
    if reference is not None:
        name, values = reference
        lines.append(f"| {name} (no training) | 0 | " + " | ".join(
            "-" if m not in values or math.isnan(values[m]) else f"{values[m]:.3f}"
            for m in main) + " |")
    lines += ["", "All test metrics (mean ± standard deviation over seeds):", "",
              "| metric | " + " | ".join(models) + " |",
              "| --- |" + " ---: |" * len(models)]
    for metric in metrics:
        lines.append(f"| {metric} | " + " | ".join(_cell(table[m].get(metric))
                                                    for m in models) + " |")
    return "\n".join(lines) + "\n"


def write_csv(table: dict[str, dict[str, Summary]],
              reference: tuple[str, dict] | None) -> str:
    """The ``results.csv`` text: model, metric, mean, std, seeds (the reference row, which
    needs no training, has seeds 0)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["model", "metric", "mean", "std", "seeds"])
    for model, metrics in table.items():
        for metric, s in metrics.items():
            writer.writerow([model, metric, repr(s.mean), repr(s.std), s.seeds])
    if reference is not None:
        name, values = reference
        for metric, value in values.items():
            writer.writerow([re.sub(r"[: ]+", "-", name), metric, repr(float(value)), 0.0, 0])
    return buffer.getvalue()


def plot_results(table: dict[str, dict[str, Summary]], reference: tuple[str, dict] | None,
                 kind: str, title: str, path: Path) -> Path:
    """Bars of the main metrics per model (mean, error bars = std over seeds), one panel per
    metric; the reference (no training) as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(table)
    metrics: list[str] = []
    for model in models:
        metrics += [k for k in table[model] if k not in metrics]
    shown = _main(kind, metrics, PLOT_METRICS)[:3]
    fig, axes = plt.subplots(1, len(shown), figsize=(4.2 * len(shown), 3.8), squeeze=False)
    for ax, metric in zip(axes[0], shown, strict=True):
        means = [table[m].get(metric, Summary(math.nan, math.nan, 0)).mean for m in models]
        stds = [table[m].get(metric, Summary(math.nan, math.nan, 0)).std for m in models]
        xs = range(len(models))
        ax.bar(xs, [0 if math.isnan(v) else v for v in means],
               yerr=[0 if math.isnan(v) else v for v in stds], capsize=4,
               color=[f"C{i % 10}" for i in xs])
        if reference is not None and metric in reference[1]:
            ax.axhline(reference[1][metric], color="black", linestyle="--", linewidth=1,
                       label=reference[0])
        ax.set_xticks(list(xs), models, rotation=30, ha="right")
        ax.set_xlabel("model")
        better = "lower" if metric in LOWER_IS_BETTER else "higher"
        ax.set_ylabel(f"test {metric} ({better} is better)")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:  # the reference line, once for the figure
        fig.legend(handles, labels, loc="upper right", fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(path)
    return path


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def compare(
    config: MFMConfig,
    models: Sequence[str],
    seeds: Sequence[int],
    output: str | Path,
    *,
    name: str | None = None,
    overwrite: bool = False,
    progress: bool = False,
    report: Callable[[RunEvent], None] | None = None,
    verbose: bool = False,
) -> CompareResult:
    """Train every model with every seed (resuming what exists) and write the tables.

    Args:
        config: the configuration shared by every run (data, sizes, training settings);
            ``model.kind`` and ``train.seed`` are set per run.
        models: ``model.kind`` values to compare, in table order.
        seeds: the seeds, the same for every model.
        output: the comparison folder (see the module docstring).
        name: the data's name in titles; default from the data spec.
        overwrite: train every run again, even finished ones.
        progress: show Lightning's progress bar inside each run.
        report: called with a :class:`RunEvent` before and after each run.
        verbose: keep Lightning's own messages.

    Raises:
        CompareError: bad models or seeds, or a finished run with another configuration.
        ConfigError, DataError: before anything is written.
    """
    from mfm.engine import NonFiniteLossError
    from mfm.run import RUN_FILES, clear_run, fit, last_checkpoint, prepare

    models = list(models)
    seeds = list(seeds)
    parse_models(",".join(models) or " ")
    parse_seeds(",".join(str(s) for s in seeds) or " ")
    output = Path(output)
    title = name or data_name(config.data.spec)
    # Everything that can be checked is checked before anything is written or trained.
    resolved, data = prepare(config)
    kind = next(iter(data.info.target_kinds().values()))[0]
    reference = reference_row(data)
    del data
    plans = []
    for model in models:
        for seed in seeds:
            wanted = run_config(resolved, model, seed)
            path = output / model / f"seed-{seed}"
            difference = None
            if (path / "config.yaml").is_file() and not overwrite:
                try:
                    saved = load_config(path / "config.yaml").to_dict()
                    difference = _first_difference(saved, wanted.to_dict())
                except ConfigError as exc:
                    difference = str(exc)
                if difference and (path / "metrics.json").is_file():
                    raise CompareError(
                        f"{path}: holds a finished run with another configuration "
                        f"({difference}); pass --overwrite or choose another --output")
            plans.append((model, seed, run_config(config, model, seed), path,
                          difference is not None))

    runs: dict[str, dict[int, dict[str, float]]] = {m: {} for m in models}
    failed: list[tuple[str, int, str]] = []
    trained = 0
    total = len(plans)
    for index, (model, seed, cfg, path, changed) in enumerate(plans, start=1):
        event = RunEvent(index, total, model, seed, path, "start")
        if (path / "metrics.json").is_file() and not overwrite:
            event.state = "kept"
            event.metrics = runs[model][seed] = _read_metrics(path / "metrics.json")
            if report:
                report(event)
            continue
        resume = False
        if overwrite:
            event.action = "restarted" if path.exists() else "new"
        elif last_checkpoint(path) is not None and not changed:
            event.action, resume = "resumed", True
        elif any((path / f).exists() for f in RUN_FILES):
            # Leftovers of a run that never wrote a checkpoint, or of other settings.
            event.action = "restarted"
            clear_run(path)
        if report:
            report(event)
        started = time.perf_counter()
        try:
            result = fit(cfg, path, overwrite=overwrite, resume=resume, progress=progress,
                         verbose=verbose)
        except NonFiniteLossError as exc:
            failed.append((model, seed, str(exc)))
            event.state, event.message = "failed", str(exc)
            event.seconds = time.perf_counter() - started
            if report:
                report(event)
            continue
        trained += 1
        event.state = "done"
        event.seconds = time.perf_counter() - started
        event.epochs = result.epochs
        event.metrics = runs[model][seed] = _read_metrics(path / "metrics.json")
        if report:
            report(event)

    table = summarise(runs)
    epochs = config.train.max_epochs
    description = (
        f"Data `{config.data.spec}`; models trained with seeds "
        f"{', '.join(str(s) for s in seeds)}, up to {epochs} epochs each (early stopping "
        f"patience {config.train.patience}); test metrics of each run's best checkpoint "
        f"(lowest validation `{config.train.monitor}`), mean ± sample standard deviation "
        "over seeds."
    )
    if failed:
        description += "\n\nFailed runs (non-finite loss): " + "; ".join(
            f"{m} seed {s}" for m, s, _ in failed) + "."
    output.mkdir(parents=True, exist_ok=True)
    files = {"md": output / "results.md", "csv": output / "results.csv",
             "png": output / "results.png"}
    _write_text(files["md"], write_markdown(table, reference, kind, title, description))
    _write_text(files["csv"], write_csv(table, reference))
    plot_results(table, reference, kind,
                 f"{title}: test metrics, mean ± std over {len(seeds)} seed(s)", files["png"])
    return CompareResult(output, runs, failed, table, trained, files)
