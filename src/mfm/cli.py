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


def _fail(message: str) -> typer.Exit:
    Console(stderr=True, highlight=False, soft_wrap=True).print(f"error: {message}",
                                                                 markup=False)
    return typer.Exit(code=2)


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
    data: Annotated[
        str | None,
        typer.Option(help="Data spec, e.g. `synthetic` or "
                     "`synthetic:modalities=2,task=classification`. Overrides the config."),
    ] = None,
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
    accelerator: Annotated[str, typer.Option(help="cpu, gpu or auto.")] = "cpu",
    devices: Annotated[int, typer.Option(help="Number of devices.")] = 1,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    verbose: Annotated[bool, typer.Option(help="Keep Lightning's own messages.")] = False,
) -> None:
    """Train an MFM, keep the best checkpoint, and report validation and test metrics.

    With no options it trains on the built-in synthetic data set (three modalities, a
    regression label) in about a minute on two CPU cores.
    """
    from mfm.data import DataError
    from mfm.run import RunError
    from mfm.run import fit as run_fit

    try:
        base = load_config(resolve_config_path(config)) if config else MFMConfig()
        cfg = with_overrides(base, data_spec=data, max_epochs=max_epochs, seed=seed,
                             batch_size=batch_size, learning_rate=learning_rate)
        out = output or Path("runs") / datetime.now().strftime("fit-%Y%m%d-%H%M%S")
        result = run_fit(cfg, out, overwrite=overwrite, progress=progress,
                         accelerator=accelerator, devices=devices, verbose=verbose)
    except (ConfigError, DataError, RunError) as exc:
        raise _fail(str(exc)) from None
    console = Console()
    console.print(metrics_table(result.metrics, f"{cfg.data.spec}: best checkpoint"))
    console.print(f"run written to {result.output} (best: {result.best_checkpoint.name}, "
                  f"{result.epochs} epochs)")


@app.command()
def evaluate(
    checkpoint: Annotated[Path, typer.Option(help="A checkpoint written by `mfm fit`.")],
    data: Annotated[
        str | None,
        typer.Option(help="Data spec to score on. Default: the data the model was trained on."),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(help="JSON file for the metrics. Default: <checkpoint>.metrics.json "
                     "beside the checkpoint."),
    ] = None,
    verbose: Annotated[bool, typer.Option(help="Keep Lightning's own messages.")] = False,
) -> None:
    """Score a checkpoint on the validation and test splits; print and write the metrics.

    The JSON has the layout of a run's metrics.json: test metrics flat, validation
    metrics under `valid/`.
    """
    from mfm.data import DataError
    from mfm.run import RunError, write_metrics
    from mfm.run import evaluate as run_evaluate

    try:
        metrics = run_evaluate(checkpoint, data, verbose=verbose)
    except (ConfigError, DataError, RunError) as exc:
        raise _fail(str(exc)) from None
    target = output or checkpoint.with_name(checkpoint.name + ".metrics.json")
    write_metrics(metrics, target)
    Console().print(metrics_table(metrics, str(checkpoint)))
    Console().print(f"metrics written to {target}")


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


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
