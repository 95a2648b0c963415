"""Whole runs: ``fit`` (train, select the best checkpoint, test) and ``evaluate``.

A fit writes into its output directory::

    config.yaml              the resolved configuration (reusable with --config)
    checkpoints/best.ckpt    lowest validation monitor (train.monitor)
    checkpoints/last.ckpt    end of the last epoch
    logs/metrics.csv         every loss term and metric per epoch (Lightning CSVLogger)
    tensorboard/             the same for TensorBoard, when it is installed
    curves.png               loss terms and validation metrics over epochs
    metrics.json             test metrics (flat) and validation metrics under valid/

Everything that can be checked before training (configuration, data, output directory)
is checked before anything is written.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger

from mfm.config import MFMConfig, resolve_output, save_config
from mfm.data import DataError, MFMDataModule, MultimodalData, load
from mfm.engine import MFMModule


class RunError(RuntimeError):
    """A run cannot start or continue (one-line message for the user)."""


@dataclass
class FitResult:
    """What :func:`fit` produced."""

    output: Path
    metrics: dict[str, float]
    best_checkpoint: Path
    last_checkpoint: Path
    epochs: int


_NOISY_WARNINGS = (
    r".*does not have many workers.*",
    r".*The number of training batches.*is smaller than the logging interval.*",
    r".*GPU available but not used.*",
    r".*Checkpoint directory .* exists and is not empty.*",
    r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",
)

# Files and folders a fit writes; --overwrite removes exactly these before a new run.
RUN_FILES = ("config.yaml", "metrics.json", "curves.png", "checkpoints", "logs", "tensorboard")


@contextmanager
def quiet_lightning(verbose: bool = False) -> Iterator[None]:
    """Silence Lightning's start-up chatter and known-harmless warnings for one run."""
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        if not verbose:
            for pattern in _NOISY_WARNINGS:
                warnings.filterwarnings("ignore", message=pattern)
            for lg in loggers:
                lg.setLevel(logging.WARNING)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)


def prepare(config: MFMConfig) -> tuple[MFMConfig, MultimodalData]:
    """Load the configured data and resolve the configuration against it.

    Raises:
        DataError: the data spec or the data is invalid.
        ConfigError: the configuration does not fit the data.
    """
    data = load(config.data.spec)
    resolved = resolve_output(config, data.info.kind, data.info.num_classes)
    return resolved, data


def _loggers(output: Path) -> list[Logger]:
    loggers: list[Logger] = [CSVLogger(save_dir=output, name="logs", version="")]
    if importlib.util.find_spec("tensorboard") is not None:
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(save_dir=output, name="tensorboard", version=""))
    return loggers


def _select(
    results: list[dict[str, float]], stage: str, names: tuple[str, ...]
) -> dict[str, float]:
    """Pick the ``stage/<name>`` metrics out of Trainer.validate/test results."""
    merged = {k: v for result in results for k, v in result.items()}
    return {name: float(merged[f"{stage}/{name}"]) for name in names}


def _json_value(value: float) -> float | None:
    return None if math.isnan(value) else value


def write_metrics(metrics: dict[str, float], path: Path) -> None:
    """Write metrics as JSON (NaN becomes null) atomically."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({k: _json_value(v) for k, v in metrics.items()}, indent=2) + "\n")
    tmp.replace(path)


def check_output_dir(output: Path, overwrite: bool) -> None:
    """Refuse to mix a new run into a directory that holds another run's results."""
    if not output.exists():
        return
    if not output.is_dir():
        raise RunError(f"{output}: exists and is not a directory")
    taken = [p for p in RUN_FILES if (output / p).exists()]
    if taken and not overwrite:
        raise RunError(
            f"{output}: already holds a run ({', '.join(taken)}); choose another --output "
            "or pass --overwrite"
        )


def clear_run(output: Path) -> None:
    """Remove a previous run's files (only those in RUN_FILES) from ``output``."""
    for name in RUN_FILES:
        path = output / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def make_trainer(
    config: MFMConfig,
    output: Path | None,
    *,
    progress: bool,
    accelerator: str = "cpu",
    devices: int | str = 1,
    callbacks: list[Any] | None = None,
) -> L.Trainer:
    """A Trainer with the project's conventions (deterministic, no model summary)."""
    train = config.train
    return L.Trainer(
        max_epochs=train.max_epochs,
        accelerator=accelerator,
        devices=devices,
        logger=_loggers(output) if output is not None else False,
        callbacks=callbacks or [],
        enable_checkpointing=output is not None,
        enable_progress_bar=progress,
        enable_model_summary=False,
        deterministic=True,
        gradient_clip_val=train.gradient_clip,
        log_every_n_steps=10,
        default_root_dir=output,
        num_sanity_val_steps=0,
    )


def fit(
    config: MFMConfig,
    output: str | Path,
    *,
    overwrite: bool = False,
    progress: bool = True,
    accelerator: str = "cpu",
    devices: int | str = 1,
    verbose: bool = False,
) -> FitResult:
    """Train an MFM, keep the best checkpoint, and score it on validation and test.

    Args:
        config: the run configuration (the data spec is ``config.data.spec``).
        output: directory for the run's files (see the module docstring).
        overwrite: allow an output directory that already holds a run.
        progress: show a progress bar.
        accelerator: Lightning accelerator (``cpu``, ``gpu``, ``auto``).
        devices: number of devices.
        verbose: keep Lightning's own messages.

    Raises:
        DataError, ConfigError, RunError: before anything is written.
    """
    output = Path(output)
    resolved, data = prepare(config)
    check_output_dir(output, overwrite)
    if overwrite and output.exists():
        clear_run(output)
    output.mkdir(parents=True, exist_ok=True)
    save_config(resolved, output / "config.yaml")

    train = resolved.train
    with quiet_lightning(verbose):
        L.seed_everything(train.seed, workers=True, verbose=False)
        module = MFMModule(resolved.to_dict(), data.info.input_sizes)
        datamodule = MFMDataModule(data, train.batch_size, train.seed, train.num_workers)
        monitor = f"valid/{train.monitor}"
        checkpoint = ModelCheckpoint(
            dirpath=output / "checkpoints", filename="best", monitor=monitor, mode="min",
            save_top_k=1, save_last=True, enable_version_counter=False,
        )
        callbacks = [
            checkpoint,
            EarlyStopping(monitor=monitor, mode="min", patience=train.patience),
            LearningRateMonitor(logging_interval="epoch"),
        ]
        trainer = make_trainer(resolved, output, progress=progress, accelerator=accelerator,
                               devices=devices, callbacks=callbacks)
        trainer.fit(module, datamodule=datamodule)
        best = Path(checkpoint.best_model_path)
        metrics = _score(trainer, module, datamodule, best)
    if trainer.is_global_zero:
        write_metrics(metrics, output / "metrics.json")
        from mfm.plots import plot_training_curves

        plot_training_curves(output / "logs" / "metrics.csv", output / "curves.png")
    return FitResult(output, metrics, best, output / "checkpoints" / "last.ckpt",
                     trainer.current_epoch)


def _score(trainer: L.Trainer, module: MFMModule, datamodule: MFMDataModule,
           checkpoint: Path | None) -> dict[str, float]:
    ckpt = str(checkpoint) if checkpoint is not None else None
    valid = trainer.validate(module, datamodule=datamodule, ckpt_path=ckpt, verbose=False)
    test = trainer.test(module, datamodule=datamodule, ckpt_path=ckpt, verbose=False)
    names = module.metrics["test"].names
    metrics = _select(test, "test", names)
    metrics.update({f"valid/{k}": v for k, v in _select(valid, "valid", names).items()})
    return metrics


def load_module(checkpoint: str | Path) -> MFMModule:
    """Load a training checkpoint without executing pickled code.

    Raises:
        RunError: the file is missing, unreadable, or not an mfm checkpoint.
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise RunError(f"{path}: no such checkpoint file")
    try:
        return MFMModule.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure means "not a usable checkpoint"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RunError(f"{path}: not a readable mfm checkpoint ({first[:200]})") from exc


def evaluate(
    checkpoint: str | Path,
    data_spec: str | None = None,
    *,
    progress: bool = False,
    verbose: bool = False,
) -> dict[str, float]:
    """Score a checkpoint on the validation and test splits of its data.

    Args:
        checkpoint: a ``.ckpt`` written by :func:`fit`.
        data_spec: other data to score on; by default the data the model was trained on.

    Returns:
        Test metrics (flat) and validation metrics under ``valid/``, as in ``metrics.json``.
    """
    with quiet_lightning(verbose):
        module = load_module(checkpoint)
        config = module.config
        if data_spec is not None:
            config = MFMConfig.from_dict({**config.to_dict(), "data": {"spec": data_spec}})
        data = load(config.data.spec)
        expected = module.model.input_sizes
        if data.info.input_sizes != expected:
            raise DataError(
                f"data {config.data.spec!r}: modalities and feature sizes "
                f"{data.info.input_sizes} do not match the model's {expected}"
            )
        datamodule = MFMDataModule(data, config.train.batch_size, config.train.seed, 0)
        trainer = make_trainer(config, None, progress=progress)
        return _score(trainer, module, datamodule, None)


def describe(module: torch.nn.Module) -> str:
    """One line: the number of trainable parameters."""
    count = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return f"{count:,} trainable parameters"
