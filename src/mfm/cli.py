"""The ``mfm`` command line (built on Typer).

Every user error (bad configuration, bad data, a used output directory, a foreign
checkpoint) ends with one ``error:`` line on standard error and exit status 2.
"""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from mfm import __version__
from mfm.config import ConfigError, MFMConfig, load_config, save_config, with_overrides

app = typer.Typer(
    name="mfm",
    help=(
        "Multimodal Factorization Model (Tsai et al., ICLR 2019): learn a multimodal "
        "discriminative factor and one generative factor per modality, for any set of "
        "modalities.\n\nStart with `mfm fit` (trains on a built-in synthetic data set), "
        "then `mfm evaluate --checkpoint RUN/checkpoints/best.ckpt`."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)

PRESET_DIR = Path(__file__).parent / "presets"

# Data options shared by fit, evaluate and data inspect.
DataOpt = Annotated[
    str | None,
    typer.Option("--data", help="Data: a path (MMSA or MultiBench .pkl, MFN h5 folder, generic "
                 ".npz file or folder) or `synthetic[:key=value,...]`. Overrides the config."),
]
FormatOpt = Annotated[
    str | None,
    typer.Option("--format", help="Data format when detection from the path is not wanted: "
                 "synthetic, npz, mfn, mmsa, multibench."),
]
ModalitiesOpt = Annotated[
    str | None, typer.Option(help="Comma-separated modalities to use, e.g. `audio,video`.")
]
LabelOpt = Annotated[
    str | None,
    typer.Option(help="How to read labels: auto, regression, classes, onehot."),
]
ThresholdOpt = Annotated[
    float | None,
    typer.Option(help="Binarise a label scale: label >= THRESHOLD is class 1 (ICT-MMMO: 3.5)."),
]
TargetOpt = Annotated[
    str | None,
    typer.Option(help="Which label(s) to learn: a comma list of [name=]source, a source "
                 "being `labels`, a named target of the file (e.g. `regression_labels_T`), "
                 "a label column, or `all` columns; several give one head each "
                 "(e.g. `M=regression_labels,T=regression_labels_T`)."),
]
TextFeatureOpt = Annotated[
    str | None, typer.Option(help="MMSA pickles: the key that feeds `text` (e.g. text_bert).")
]
NonfiniteOpt = Annotated[
    str | None,
    typer.Option(help="NaN/inf features: `error` (refuse, with counts) or `zero` (replace, "
                 "warn)."),
]
NormalizeOpt = Annotated[
    bool | None,
    typer.Option("--normalize/--no-normalize",
                 help="Z-score features with training-split statistics (default on)."),
]


def data_options(
    fmt: str | None = None, modalities: str | None = None, label: str | None = None,
    threshold: float | None = None, target: str | None = None,
    text_feature: str | None = None, nonfinite: str | None = None,
    normalize: bool | None = None,
) -> dict[str, object]:
    """The DataConfig fields given on the command line (None = keep the config's)."""
    return {
        "format": fmt,
        "modalities": [m.strip() for m in modalities.split(",") if m.strip()]
        if modalities else None,
        "label": label, "threshold": threshold, "target": target,
        "text_feature": text_feature, "nonfinite": nonfinite, "normalize": normalize,
    }


def _fail(message: str, code: int = 2) -> typer.Exit:
    """Print one ``error:`` line on stderr; exit 2 (bad input) or ``code``."""
    Console(stderr=True, highlight=False, soft_wrap=True).print(f"error: {message}",
                                                                 markup=False)
    return typer.Exit(code=code)


def resolve_config_path(value: str) -> Path:
    """A path, or the name of a shipped preset (e.g. ``mosi-mmsa``)."""
    path = Path(value)
    if path.exists() or path.suffix in (".yaml", ".yml"):
        return path
    preset = PRESET_DIR / f"{value}.yaml"
    if preset.is_file():
        return preset
    names = ", ".join(sorted(p.stem for p in PRESET_DIR.glob("*.yaml")))
    raise ConfigError(f"{value}: no such file, and not a preset name (presets: {names})")


def metrics_table(metrics: dict[str, float], title: str) -> Table:
    """Metrics as a table: one row per metric, validation and test columns."""
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("valid", justify="right")
    table.add_column("test", justify="right")
    for name, value in metrics.items():
        if name.startswith("valid/"):
            continue
        valid = metrics.get(f"valid/{name}")
        table.add_row(name, "-" if valid is None else f"{valid:.4f}", f"{value:.4f}")
    return table


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mfm {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Multimodal Factorization Model."""


@app.command()
def fit(
    config: Annotated[
        str | None,
        typer.Option(help="YAML configuration file, or a preset name: mosi-original, "
                     "mosi-mmsa. Default: generic settings for any modalities."),
    ] = None,
    data: DataOpt = None,
    fmt: FormatOpt = None,
    modalities: ModalitiesOpt = None,
    label: LabelOpt = None,
    threshold: ThresholdOpt = None,
    target: TargetOpt = None,
    text_feature: TextFeatureOpt = None,
    nonfinite: NonfiniteOpt = None,
    normalize: NormalizeOpt = None,
    output: Annotated[
        Path | None,
        typer.Option(help="Directory for checkpoints, logs, config.yaml and metrics.json. "
                     "Default: runs/fit-<date>-<time>."),
    ] = None,
    max_epochs: Annotated[int | None, typer.Option(help="Upper bound on epochs.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of every random generator.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Samples per batch.")] = None,
    learning_rate: Annotated[float | None, typer.Option(help="Adam learning rate.")] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Allow an output directory that already holds a run.")
    ] = False,
    gradient_clip: Annotated[
        float | None, typer.Option(help="Clip the gradient norm to this value.")
    ] = None,
    weighting: Annotated[
        str | None,
        typer.Option(help="Loss weighting: fixed (the configured lambdas), uncertainty, "
                     "gradnorm or dwa."),
    ] = None,
    model_kind: Annotated[
        str | None,
        typer.Option("--model", help="Which model (`model.kind`): mfm (default); baselines "
                     "mfn, ef-lstm (early fusion), lf (late fusion); ablations mfm-no-zy, "
                     "mfm-zy-only, mfm-disc."),
    ] = None,
    modality_dropout: Annotated[
        float | None,
        typer.Option(help="Probability of removing each modality from a training sample, "
                     "to train surrogate inference for missing modalities (e.g. 0.3)."),
    ] = None,
    resume: Annotated[
        str | None,
        typer.Option(help="Continue a killed or finished run: its folder, or `auto` (resume "
                     "--output when it holds checkpoints/last.ckpt, else start it)."),
    ] = None,
    accelerator: Annotated[str, typer.Option(help="cpu, gpu or auto.")] = "cpu",
    devices: Annotated[int, typer.Option(help="Devices (processes) per machine.")] = 1,
    strategy: Annotated[
        str, typer.Option(help="Lightning strategy: auto, ddp (one process per device).")
    ] = "auto",
    num_nodes: Annotated[int, typer.Option(help="Machines taking part (with ddp).")] = 1,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    verbose: Annotated[bool, typer.Option(help="Keep Lightning's own messages.")] = False,
) -> None:
    """Train an MFM, keep the best checkpoint, and report validation and test metrics.

    With no options it trains on the built-in synthetic data set (three modalities, a
    regression label) in about a minute on two CPU cores. A run killed at any point
    continues from its last epoch with `--resume DIR`.
    """
    from mfm.data import DataError
    from mfm.engine import NonFiniteLossError
    from mfm.run import RunError, last_checkpoint
    from mfm.run import fit as run_fit

    try:
        resuming = False
        if resume is not None and resume != "auto":
            if config or data or output:
                raise ConfigError("--resume continues a run with its own config.yaml and "
                                  "folder; do not combine it with --config, --data or --output")
            output = Path(resume)
            resuming = True
        elif resume == "auto":
            if output is None:
                raise ConfigError("--resume auto needs --output (the folder to resume or start)")
            resuming = last_checkpoint(output) is not None
        if resuming:
            assert output is not None
            base = load_config(output / "config.yaml")
        else:
            base = load_config(resolve_config_path(config)) if config else MFMConfig()
        options = data_options(fmt, modalities, label, threshold, target, text_feature,
                               nonfinite, normalize)
        if weighting is not None:
            merged = base.to_dict()
            merged["loss"]["weighting"] = weighting
            base = MFMConfig.from_dict(merged, source="--weighting")
        if model_kind is not None:
            merged = base.to_dict()
            merged["model"]["kind"] = model_kind
            base = MFMConfig.from_dict(merged, source="--model")
        cfg = with_overrides(base, data_spec=data, data=options, max_epochs=max_epochs,
                             seed=seed, batch_size=batch_size, learning_rate=learning_rate,
                             gradient_clip=gradient_clip,
                             default_modality_dropout=modality_dropout)
        out = output or Path("runs") / datetime.now().strftime("fit-%Y%m%d-%H%M%S")
        result = run_fit(cfg, out, overwrite=overwrite, resume=resuming, progress=progress,
                         accelerator=accelerator, devices=devices, strategy=strategy,
                         num_nodes=num_nodes, verbose=verbose)
    except (ConfigError, DataError, RunError) as exc:
        raise _fail(str(exc)) from None
    except NonFiniteLossError as exc:
        raise _fail(str(exc), code=3) from None
    from mfm.run import is_rank_zero

    if not is_rank_zero():
        return  # other DDP processes stay quiet
    console = Console()
    console.print(metrics_table(result.metrics, f"{cfg.data.spec}: best checkpoint"))
    console.print(f"run written to {result.output} (best: {result.best_checkpoint.name}, "
                  f"{result.epochs} epochs)")


ModelOpt = Annotated[
    Path | None, typer.Option(help="A model folder written by `mfm export`.")
]
CheckpointOpt = Annotated[
    Path | None, typer.Option(help="A checkpoint written by `mfm fit` (.ckpt).")
]
TrainedDataOpt = Annotated[
    str | None,
    typer.Option(help="Data (path or spec). Default: the data the model was trained on."),
]


def _check_split(split: str) -> None:
    """Refuse a split name other than train, valid or test."""
    if split not in ("train", "valid", "test"):
        raise ConfigError(f"--split: expected train, valid or test, found {split!r}")


def _trained(checkpoint: Path | None, model: Path | None) -> Path:
    if (checkpoint is None) == (model is None):
        raise ConfigError("give exactly one of --checkpoint CKPT or --model DIR")
    return checkpoint if checkpoint is not None else model  # type: ignore[return-value]


@app.command()
def evaluate(
    checkpoint: CheckpointOpt = None,
    model: ModelOpt = None,
    data: Annotated[
        str | None,
        typer.Option(help="Data to score on (path or spec). Default: the data the model was "
                     "trained on, read with the same options."),
    ] = None,
    fmt: FormatOpt = None,
    nonfinite: NonfiniteOpt = None,
    output: Annotated[
        Path | None,
        typer.Option(help="JSON file for the metrics. Default: <checkpoint>.metrics.json "
                     "beside the checkpoint, or metrics.json in the model folder."),
    ] = None,
    verbose: Annotated[bool, typer.Option(help="Keep Lightning's own messages.")] = False,
) -> None:
    """Score a checkpoint or an exported model on the validation and test splits; print and
    write the metrics.

    The JSON has the layout of a run's metrics.json: test metrics flat, validation
    metrics under `valid/`.
    """
    from mfm.data import DataError
    from mfm.run import RunError, write_metrics
    from mfm.run import evaluate as run_evaluate

    try:
        source = _trained(checkpoint, model)
        options = data_options(fmt, nonfinite=nonfinite)
        metrics = run_evaluate(source, data, data_options=options, verbose=verbose)
    except (ConfigError, DataError, RunError) as exc:
        raise _fail(str(exc)) from None
    if output is not None:
        target = output
    elif source.is_dir():
        target = source / "metrics.json"
    else:
        target = source.with_name(source.name + ".metrics.json")
    write_metrics(metrics, target)
    Console().print(metrics_table(metrics, str(source)))
    Console().print(f"metrics written to {target}")


@app.command()
def export(
    checkpoint: Annotated[Path, typer.Option(help="A checkpoint written by `mfm fit`.")],
    out: Annotated[Path, typer.Option(help="Folder for model.safetensors, config.yaml, "
                                      "model.json and normalization.json.")],
) -> None:
    """Export a checkpoint as a pickle-free model folder (safetensors weights, YAML config,
    JSON normalisation statistics), loadable with `mfm.MFM.from_pretrained(DIR)`."""
    from mfm.run import RunError
    from mfm.run import export as run_export

    try:
        folder = run_export(checkpoint, out)
    except RunError as exc:
        raise _fail(str(exc)) from None
    Console().print(f"model exported to {folder}")


@app.command()
def predict(
    out: Annotated[Path, typer.Option(help="CSV file for the predictions.")],
    model: ModelOpt = None,
    checkpoint: CheckpointOpt = None,
    data: Annotated[
        str | None,
        typer.Option(help="Data to predict (path or spec). Default: the training data."),
    ] = None,
    fmt: FormatOpt = None,
    nonfinite: NonfiniteOpt = None,
    split: Annotated[
        str, typer.Option(help="Which split(s): train, valid, test, or all.")
    ] = "test",
    batch_size: Annotated[int, typer.Option(help="Samples per forward pass.")] = 256,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Write per-sample predictions (with ids when the data has them) as CSV."""
    from mfm.data import DataError
    from mfm.run import RunError
    from mfm.run import predict as run_predict

    try:
        source = _trained(checkpoint, model)
        if split not in ("train", "valid", "test", "all"):
            raise ConfigError(f"--split: expected train, valid, test or all, found {split!r}")
        splits = ("train", "valid", "test") if split == "all" else (split,)
        path = run_predict(source, out, data, splits=splits,
                           data_options=data_options(fmt, nonfinite=nonfinite),
                           batch_size=batch_size, progress=progress)
    except (ConfigError, DataError, RunError) as exc:
        raise _fail(str(exc)) from None
    Console().print(f"predictions written to {path}")


@app.command()
def robustness(
    checkpoint: CheckpointOpt = None,
    model: ModelOpt = None,
    data: TrainedDataOpt = None,
    output: Annotated[
        Path, typer.Option(help="Folder for robustness.json/.csv/.md/.png.")
    ] = Path("robustness"),
    split: Annotated[str, typer.Option(help="Split to score: train, valid or test.")] = "test",
) -> None:
    """Score a model with modalities missing (every subset: surrogate inference vs zero
    filling, and the error of rebuilding each missing modality), with time steps dropped
    and with Gaussian noise (levels 0.0-0.9 per modality)."""
    from mfm.data import DataError
    from mfm.run import RunError
    from mfm.run import robustness as run_robustness

    try:
        source = _trained(checkpoint, model)
        _check_split(split)
        _, paths = run_robustness(source, output, data, split=split)
    except (ConfigError, DataError, RunError) as exc:
        raise _fail(str(exc)) from None
    from rich.markdown import Markdown

    Console().print(Markdown(paths["md"].read_text()))
    Console().print(f"report written to {output}/robustness.{{json,csv,md,png}}")


@app.command()
def interpret(
    checkpoint: CheckpointOpt = None,
    model: ModelOpt = None,
    data: TrainedDataOpt = None,
    output: Annotated[
        Path, typer.Option(help="Folder for interpret.json/.csv/.png.")
    ] = Path("interpret"),
    split: Annotated[str, typer.Option(help="Split to analyse: train, valid or test.")] = "test",
    max_samples: Annotated[
        int, typer.Option(min=1, help="Analyse at most this many samples (drawn with --seed).")
    ] = 256,
    bins: Annotated[
        int, typer.Option(min=1, help="Regression: quantile bins of the target per group.")
    ] = 3,
    seed: Annotated[int, typer.Option(help="Seed of the sample draw.")] = 0,
) -> None:
    """Per modality and time step, how much each rebuilt step depends on the discriminative
    factor F_y vs the modality-specific F_m (Jacobian norms, overall and per class or label
    bin), and how much the prediction uses each modality (gradient x input, and the metric
    without it). See `mfm.interpret` for the definitions."""
    from mfm.data import DataError
    from mfm.interpret import run as run_interpret
    from mfm.interpret import summary_lines
    from mfm.run import RunError

    try:
        source = _trained(checkpoint, model)
        _check_split(split)
        report, _ = run_interpret(source, output, data, split=split, max_samples=max_samples,
                                  bins=bins, seed=seed)
    except (ConfigError, DataError, RunError) as exc:
        raise _fail(str(exc)) from None
    console = Console(highlight=False, soft_wrap=True)
    for line in summary_lines(report):
        console.print(line, markup=False)
    console.print(f"report written to {output}/interpret.{{json,csv,png}}", markup=False)


@app.command()
def generate(
    checkpoint: CheckpointOpt = None,
    model: ModelOpt = None,
    data: Annotated[
        str | None,
        typer.Option(help="Data for the steps per modality and the reconstructions. Default: "
                     "the training data, or none when --steps names every modality."),
    ] = None,
    output: Annotated[Path, typer.Option(help="Folder for the images and plots.")]
    = Path("generate"),
    n: Annotated[int, typer.Option("--n", min=1, help="Rows of the prior grids; samples "
                                   "of the reconstruction figures.")] = 8,
    columns: Annotated[int, typer.Option(min=1, help="Columns of the prior grids.")] = 8,
    split: Annotated[str, typer.Option(help="Split of the real samples.")] = "test",
    image: Annotated[
        list[str] | None,
        typer.Option(help="Draw a modality as an image: NAME=HxW (H*W = steps x features), "
                     "or NAME=off for sequence plots. Repeatable. Default: automatic "
                     "(see `mfm.generate`)."),
    ] = None,
    steps: Annotated[
        list[str] | None,
        typer.Option(help="Steps to generate per modality: NAME=T. Repeatable."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the prior draws.")] = 0,
) -> None:
    """Sample the factors from the prior N(0, I) and decode every modality: image grids
    (rows sharing Z_y, rows sharing Z_a, inputs beside reconstructions and beside the
    modality rebuilt with it absent) and sequence plots."""
    from mfm.data import DataError
    from mfm.generate import parse_images, parse_steps
    from mfm.generate import run as run_generate
    from mfm.run import RunError

    try:
        source = _trained(checkpoint, model)
        _check_split(split)
        result = run_generate(source, output, data, n=n, columns=columns, split=split,
                              steps=parse_steps(steps or []), images=parse_images(image or []),
                              seed=seed)
    except (ConfigError, DataError, RunError) as exc:
        raise _fail(str(exc)) from None
    console = Console(highlight=False, soft_wrap=True)
    for name, entry in result.summary["modalities"].items():
        shape = entry["image_shape"]
        what = f"image {shape[0]}x{shape[1]}" if shape else "sequence"
        console.print(f"{name}: {what} ({entry['rule']}): {', '.join(entry['files'])}",
                      markup=False)
    console.print(f"written to {result.output}", markup=False)


@app.command()
def compare(
    data: DataOpt = None,
    models: Annotated[
        str,
        typer.Option(help="Comma-separated models (`model.kind`): mfm, mfn, ef-lstm, lf, "
                     "mfm-no-zy, mfm-zy-only, mfm-disc."),
    ] = "mfm,mfn,ef-lstm,lf",
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds, e.g. `1,2,3`.")] = "1,2,3",
    output: Annotated[
        Path | None,
        typer.Option(help="Folder for the runs (`<model>/seed-<s>/`) and results.md/.csv/"
                     ".png. Default: `runs/compare/<data name>`. Rerunning resumes it."),
    ] = None,
    config: Annotated[
        str | None,
        typer.Option(help="YAML configuration or preset shared by every run."),
    ] = None,
    fmt: FormatOpt = None,
    modalities: ModalitiesOpt = None,
    label: LabelOpt = None,
    threshold: ThresholdOpt = None,
    target: TargetOpt = None,
    text_feature: TextFeatureOpt = None,
    nonfinite: NonfiniteOpt = None,
    normalize: NormalizeOpt = None,
    max_epochs: Annotated[int | None, typer.Option(help="Upper bound on epochs.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Samples per batch.")] = None,
    learning_rate: Annotated[float | None, typer.Option(help="Adam learning rate.")] = None,
    name: Annotated[
        str | None, typer.Option(help="The data's name in titles. Default: from --data.")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Train every run again, even finished ones.")
    ] = False,
    progress: Annotated[
        bool, typer.Option(help="Show Lightning's progress bar inside each run.")
    ] = False,
    verbose: Annotated[bool, typer.Option(help="Keep Lightning's own messages.")] = False,
) -> None:
    """Train several models (the MFM, baselines, ablations) with several seeds on one data
    set and tabulate test metrics as mean ± std over seeds (results.md, results.csv,
    results.png).

    Finished runs are kept and not trained again, so an interrupted comparison continues
    where it stopped when rerun with the same options.
    """
    from mfm.compare import CompareError, RunEvent, data_name, parse_models, parse_seeds, slug
    from mfm.compare import compare as run_compare
    from mfm.data import DataError
    from mfm.run import RunError

    console = Console(highlight=False)
    status = console.status("")

    def show(event: RunEvent) -> None:
        head = f"[{event.index}/{event.total}] {event.model} seed {event.seed}"
        main = next(iter(event.metrics.items()), None)
        for key in ("MAE", "accuracy"):
            if key in event.metrics:
                main = (key, event.metrics[key])
        score = f"test {main[0]} {main[1]:.4f}" if main else ""
        if event.state == "start":
            status.update(f"{head}: training ({event.action}) in {event.path}")
            status.start()
            return
        status.stop()
        if event.state == "kept":
            console.print(f"{head}: kept (finished before): {score}")
        elif event.state == "failed":
            console.print(f"{head}: failed after {event.seconds:.0f} s: {event.message}")
        else:
            console.print(f"{head}: {event.action}, {event.epochs} epochs in "
                          f"{event.seconds:.0f} s: {score}")

    try:
        model_list = parse_models(models)
        seed_list = parse_seeds(seeds)
        base = load_config(resolve_config_path(config)) if config else MFMConfig()
        options = data_options(fmt, modalities, label, threshold, target, text_feature,
                               nonfinite, normalize)
        cfg = with_overrides(base, data_spec=data, data=options, max_epochs=max_epochs,
                             batch_size=batch_size, learning_rate=learning_rate)
        title = name or data_name(cfg.data.spec)
        out = output or Path("runs") / "compare" / slug(title)
        result = run_compare(cfg, model_list, seed_list, out, name=title, overwrite=overwrite,
                             progress=progress, report=show, verbose=verbose)
    except (CompareError, ConfigError, DataError, RunError) as exc:
        status.stop()
        raise _fail(str(exc)) from None
    finally:
        status.stop()
    typer.echo(result.files["md"].read_text())
    console.print(f"results written to {out}/results.{{md,csv,png}} ({result.trained} run(s) "
                  "trained now)")
    if result.failed:
        raise _fail(f"{len(result.failed)} run(s) stopped on a non-finite loss (see "
                    f"{result.files['md']})", code=3)


@app.command("config")
def show_config(
    preset: Annotated[
        str | None, typer.Option(help="Start from a preset or file instead of the defaults.")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Write to this file instead of printing.")]
    = None,
) -> None:
    """Print (or write) a complete configuration to start from."""
    import yaml

    try:
        cfg = load_config(resolve_config_path(preset)) if preset else MFMConfig()
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    if out is not None:
        save_config(cfg, out)
        typer.echo(f"configuration written to {out}")
    else:
        sys.stdout.write(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


data_app = typer.Typer(
    help="Look at data before training, and build AV-MNIST from raw files.",
    no_args_is_help=True,
)
app.add_typer(data_app, name="data")


@data_app.command("inspect")
def data_inspect(
    spec: Annotated[str, typer.Argument(help="A path or `synthetic[:key=value,...]`.")],
    fmt: FormatOpt = None,
    modalities: ModalitiesOpt = None,
    label: LabelOpt = None,
    threshold: ThresholdOpt = None,
    target: TargetOpt = None,
    text_feature: TextFeatureOpt = None,
    nonfinite: NonfiniteOpt = "zero",
) -> None:
    """Show what the loader understood: splits, modalities, shapes, lengths, labels and
    non-finite counts (counted before cleaning; shown with `--nonfinite zero`, the default
    here)."""
    from mfm.data import DataError, load
    from mfm.data.batch import label_mask

    try:
        cfg = with_overrides(MFMConfig(), data_spec=spec, data=data_options(
            fmt, modalities, label, threshold, target, text_feature, nonfinite, False)).data
        data = load(cfg)
    except (ConfigError, DataError) as exc:
        raise _fail(str(exc)) from None
    console = Console()
    info = data.info
    targets = info.target_kinds()
    table = Table(title=f"{spec}: " + ", ".join(
        f"{name} ({kind}" + (f", {k} classes)" if kind == "classification" else ")")
        for name, (kind, k) in targets.items()))
    for column in ("split", "modality", "shape (N, T, d)", "present", "length min/mean/max",
                   "NaN", "inf"):
        table.add_column(column, justify="left" if column in ("split", "modality") else "right")
    for split_name, split in data.splits.items():
        for name, x in split.features.items():
            n = split.lengths[name].double()
            nan, inf = data.report.nonfinite.get((split_name, name), (0, 0))
            table.add_row(split_name, name, str(tuple(x.shape)),
                          f"{int((n > 0).sum())}/{len(n)}",
                          f"{int(n.min())}/{float(n.mean()):.1f}/{int(n.max())}",
                          str(nan), str(inf))
    console.print(table)
    for target, (kind, num_classes) in info.target_kinds().items():
        title = f"labels: {target} ({kind}"
        labels = Table(title=title + (f", {num_classes} classes)" if kind == "classification"
                                      else ")"))
        labels.add_column("split")
        labels.add_column("missing", justify="right")
        columns = ([f"class {k}" for k in range(num_classes)] if kind == "classification"
                   else ["mean", "std", "min", "max"])
        for column in columns:
            labels.add_column(column, justify="right")
        for split_name, split in data.splits.items():
            y = (split.targets or {})[target]
            present = label_mask(y)
            y = y[present]
            cells = [split_name, str(int((~present).sum()))]
            if kind == "classification":
                cells += [str(c) for c in y.bincount(minlength=num_classes).tolist()]
            elif len(y):
                y = y.double()
                cells += [f"{float(y.mean()):.3f}", f"{float(y.std()):.3f}",
                          f"{float(y.min()):.3f}", f"{float(y.max()):.3f}"]
            else:
                cells += ["-"] * 4
            labels.add_row(*cells)
        console.print(labels)


@data_app.command("build-avmnist")
def data_build_avmnist(
    fsdd: Annotated[Path, typer.Option(help="FSDD `recordings` folder of {digit}_{speaker}_"
                                       "{index}.wav files.")],
    mnist: Annotated[Path, typer.Option(help="Folder with t10k-images-idx3-ubyte.gz and "
                                        "t10k-labels-idx1-ubyte.gz.")],
    out: Annotated[Path, typer.Option(help="Output .npz file (the generic format).")],
    seed: Annotated[int, typer.Option(help="Seed of the image pairing and the split.")] = 0,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Build AV-MNIST: each spoken digit (log-spectrogram) paired with an MNIST image of the
    same digit; FSDD's split (takes 0-4 are test). Train on it with `mfm fit --data OUT`."""
    from mfm.data import DataError
    from mfm.data.avmnist import write_avmnist

    try:
        sizes = write_avmnist(fsdd, mnist, out, seed=seed, progress=progress)
    except DataError as exc:
        raise _fail(str(exc)) from None
    Console().print(f"AV-MNIST written to {out}: " + ", ".join(f"{k} {v}" for k, v in
                                                               sizes.items()))


def _format_warning(message: Warning | str, category: type[Warning], *args: object,
                    **kwargs: object) -> str:
    return f"warning: {message}\n"


def main() -> None:
    """Console-script entry point."""
    import warnings

    warnings.formatwarning = _format_warning  # type: ignore[assignment]
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
