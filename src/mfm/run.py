"""Whole runs: ``fit`` (train, select the best checkpoint, test) and ``evaluate``.

A fit writes into its output directory::

    config.yaml              the resolved configuration (reusable with --config)
    checkpoints/best.ckpt    lowest validation monitor (train.monitor)
    checkpoints/last.ckpt    end of the last epoch
    logs/metrics.csv         every loss term and metric per epoch (Lightning CSVLogger)
    tensorboard/             the same for TensorBoard, when it is installed
    curves.png               loss terms and validation metrics over epochs
    weights.png              each loss term's weight over epochs
    metrics.json             test metrics (flat) and validation metrics under valid/

Everything that can be checked before training (configuration, data, output directory)
is checked before anything is written.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import re
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger

from mfm.config import MFMConfig, resolve_output, save_config, with_overrides
from mfm.data import DataError, MFMDataModule, MultimodalData, load
from mfm.engine import MFMModule, RngState
from mfm.model.mfm import MFM


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
    r".*Experiment logs directory .* exists and is not empty.*",
    r".*is not a registered Tensor.*",
    # Metrics are gathered by torchmetrics before they are logged, so sync_dist is not needed.
    r".*It is recommended to use `self.log\(.*sync_dist=True.*",
    # MFMMetrics counts a sample repeated by the DistributedSampler once (by its index).
    r".*Using `DistributedSampler` with the dataloaders.*",
)

# Files and folders a fit writes; --overwrite removes exactly these before a new run.
RUN_FILES = ("config.yaml", "metrics.json", "curves.png", "weights.png", "checkpoints", "logs",
             "tensorboard")


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
    data = load(config.data)
    resolved = resolve_output(config, data.info.target_kinds())
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


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoint files that are whole or absent: written beside, flushed, then renamed.

    Loading uses ``torch.load(weights_only=True)``: a checkpoint can hold tensors and plain
    data, never code.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any,
                        storage_options: Any | None = None) -> None:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        with tmp.open("wb") as handle:
            torch.save(checkpoint, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)

    def load_checkpoint(self, path: Any, map_location: Any | None = None,
                        weights_only: bool | None = None) -> dict[str, Any]:
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)


def is_rank_zero() -> bool:
    """True in the process that writes files (rank 0, or the only process)."""
    return rank_zero_only.rank == 0


def make_trainer(
    config: MFMConfig,
    output: Path | None,
    *,
    progress: bool,
    accelerator: str = "cpu",
    devices: int | str = 1,
    strategy: str = "auto",
    num_nodes: int = 1,
    callbacks: list[Any] | None = None,
) -> L.Trainer:
    """A Trainer with the project's conventions (deterministic, atomic checkpoints)."""
    train = config.train
    chosen: Any = strategy
    if strategy == "ddp":
        from lightning.pytorch.strategies import DDPStrategy

        # The surrogate path (and GradNorm's weights) take part only in some steps.
        chosen = DDPStrategy(find_unused_parameters=True)
    return L.Trainer(
        max_epochs=train.max_epochs,
        accelerator=accelerator,
        devices=devices,
        strategy=chosen,
        num_nodes=num_nodes,
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
        plugins=[AtomicCheckpointIO()],
    )


def last_checkpoint(output: Path) -> Path | None:
    """The run's ``checkpoints/last.ckpt`` when it exists."""
    path = output / "checkpoints" / "last.ckpt"
    return path if path.is_file() else None


def fit(
    config: MFMConfig,
    output: str | Path,
    *,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
    accelerator: str = "cpu",
    devices: int | str = 1,
    strategy: str = "auto",
    num_nodes: int = 1,
    verbose: bool = False,
) -> FitResult:
    """Train an MFM, keep the best checkpoint, and score it on validation and test.

    Args:
        config: the run configuration (the data is ``config.data``).
        output: directory for the run's files (see the module docstring).
        overwrite: allow an output directory that already holds a run (its files are
            removed first).
        resume: continue the run in ``output`` from ``checkpoints/last.ckpt`` (optimizer,
            scheduler, early stopping, RNG and sample order restored).
        progress: show a progress bar.
        accelerator: Lightning accelerator (``cpu``, ``gpu``, ``auto``).
        devices: devices per node.
        strategy: Lightning strategy (``auto``, ``ddp``, ...).
        num_nodes: machines taking part.
        verbose: keep Lightning's own messages.

    Raises:
        DataError, ConfigError, RunError: before anything is written.
        NonFiniteLossError: a loss term became NaN or infinite (the last good checkpoint
            stays on disk).
    """
    output = Path(output)
    resolved, data = prepare(config)
    ckpt_path: Path | None = None
    if resume:
        ckpt_path = last_checkpoint(output)
        if ckpt_path is None:
            raise RunError(f"{output}: no checkpoints/last.ckpt to resume from")
    if is_rank_zero():
        if not resume:
            check_output_dir(output, overwrite)
            if overwrite and output.exists():
                clear_run(output)
        output.mkdir(parents=True, exist_ok=True)
        save_config(resolved, output / "config.yaml")

    train = resolved.train
    if accelerator == "cpu" and isinstance(devices, int) and devices > 1:
        # Several processes on one machine's cores: share them instead of oversubscribing.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // devices))
    with quiet_lightning(verbose):
        L.seed_everything(train.seed, workers=True, verbose=False)
        module = MFMModule(resolved.to_dict(), data.info.input_sizes, data.normalization)
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
            RngState(),
        ]
        trainer = make_trainer(resolved, output, progress=progress, accelerator=accelerator,
                               devices=devices, strategy=strategy, num_nodes=num_nodes,
                               callbacks=callbacks)
        trainer.fit(module, datamodule=datamodule,
                    ckpt_path=str(ckpt_path) if ckpt_path is not None else None)
        metrics = _score(trainer, module, datamodule, "best")
    if trainer.is_global_zero:
        write_metrics(metrics, output / "metrics.json")
        from mfm.plots import plot_loss_weights, plot_training_curves

        plot_training_curves(output / "logs" / "metrics.csv", output / "curves.png")
        plot_loss_weights(output / "logs" / "metrics.csv", output / "weights.png")
    return FitResult(output, metrics, Path(checkpoint.best_model_path),
                     output / "checkpoints" / "last.ckpt", trainer.current_epoch)


def _score(trainer: L.Trainer, module: MFMModule, datamodule: MFMDataModule,
           checkpoint: str | None) -> dict[str, float]:
    ckpt = checkpoint
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
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return MFMModule.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure means "not a usable checkpoint"
        text = str(exc)
        refused = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        if refused:
            reason = (f"refused to load {refused.group(1)}: a checkpoint may hold tensors and "
                      "plain data only")
        else:
            reason = text.strip().splitlines()[0][:200] if text.strip() else type(exc).__name__
        raise RunError(f"{path}: not a readable mfm checkpoint ({reason})") from exc


def load_export(directory: str | Path) -> MFMModule:
    """Load a model folder written by :func:`export` (safetensors, YAML, JSON; no pickle).

    Raises:
        RunError: the folder is missing files or holds unusable weights.
    """
    import yaml

    folder = Path(directory)
    if not folder.is_dir():
        raise RunError(f"{folder}: no such model folder")
    try:
        model = MFM.from_pretrained(folder)
        config = yaml.safe_load((folder / "config.yaml").read_text())
    except (ValueError, yaml.YAMLError) as exc:
        raise RunError(str(exc).splitlines()[0]) from exc
    stats_file = folder / "normalization.json"
    stats = json.loads(stats_file.read_text()) if stats_file.is_file() else None
    module = MFMModule(config, model.input_sizes, stats)
    module.model.load_state_dict(model.state_dict())
    return module


def load_trained(path: str | Path) -> MFMModule:
    """A checkpoint file (``.ckpt``) or an exported model folder."""
    return load_export(path) if Path(path).is_dir() else load_module(path)


def export(checkpoint: str | Path, out: str | Path) -> Path:
    """Write a checkpoint's model as ``model.safetensors``, ``config.yaml``, ``model.json``
    and ``normalization.json`` into ``out`` (see :meth:`mfm.model.MFM.save_pretrained`)."""
    module = load_module(checkpoint)
    return module.model.save_pretrained(out, run_config=module.config.to_dict(),
                                        normalization=module.normalization)


def data_for(module: MFMModule, data_spec: str | None,
             data_options: dict[str, Any] | None) -> tuple[MFMConfig, MultimodalData]:
    """Load data for a trained model: ``data_spec`` (default: its training data), read with
    the model's configuration and normalisation statistics.

    Raises:
        DataError: the data is invalid or its modalities and sizes are not the model's.
    """
    config = with_overrides(module.config, data_spec=data_spec, data=data_options)
    data = load(config.data, stats=module.normalization)
    expected = module.model.input_sizes
    if data.info.input_sizes != expected:
        raise DataError(
            f"data {config.data.spec!r}: modalities and feature sizes "
            f"{data.info.input_sizes} do not match the model's {expected}"
        )
    return config, data


def evaluate(
    checkpoint: str | Path,
    data_spec: str | None = None,
    *,
    data_options: dict[str, Any] | None = None,
    progress: bool = False,
    verbose: bool = False,
) -> dict[str, float]:
    """Score a checkpoint (or an exported model folder) on the validation and test splits.

    The data is read as the model was trained (same data options) and normalised with
    the statistics stored with the model.

    Args:
        checkpoint: a ``.ckpt`` written by :func:`fit`, or a folder written by :func:`export`.
        data_spec: other data to score on; by default the data the model was trained on.
        data_options: other :class:`~mfm.config.DataConfig` fields to change.

    Returns:
        Test metrics (flat) and validation metrics under ``valid/``, as in ``metrics.json``.
    """
    with quiet_lightning(verbose):
        module = load_trained(checkpoint)
        config, data = data_for(module, data_spec, data_options)
        datamodule = MFMDataModule(data, config.train.batch_size, config.train.seed, 0)
        trainer = make_trainer(config, None, progress=progress)
        return _score(trainer, module, datamodule, None)


def predict(
    model: str | Path,
    out: str | Path,
    data_spec: str | None = None,
    *,
    splits: tuple[str, ...] = ("test",),
    data_options: dict[str, Any] | None = None,
    batch_size: int = 256,
    progress: bool = True,
    verbose: bool = False,
) -> Path:
    """Write per-sample predictions of a trained model as CSV.

    Columns: ``split``, ``index``, ``id`` (when the data has ids), ``target``, then
    ``prediction`` (regression) or ``predicted_class`` and ``prob_<k>`` per class. With
    several targets these columns repeat per target, prefixed ``<target>:`` (a missing
    label is an empty cell).

    Args:
        model: a ``.ckpt`` file or an exported model folder.
        out: the CSV file (written atomically).
        data_spec: the data; by default the data the model was trained on.
        splits: which splits to predict.
        batch_size: samples per forward pass.
    """
    import csv

    from torch.utils.data import DataLoader

    with quiet_lightning(verbose):
        module = load_trained(model)
        config, data = data_for(module, data_spec, data_options)
        trainer = make_trainer(config, None, progress=progress)
        specs = module.targets
        several = len(specs) > 1
        rows: list[list[Any]] = []
        for split in splits:
            dataset = data[split]
            loader = DataLoader(dataset, batch_size=batch_size, collate_fn=dataset.collate)
            outputs = trainer.predict(module, dataloaders=loader)
            assert outputs is not None
            values = {name: torch.cat([o[name].detach().cpu() for o in outputs])  # type: ignore[index]
                      for name in specs}
            labels = dataset.targets or {}
            for i in range(len(dataset)):
                row: list[Any] = [split, i, dataset.ids[i] if dataset.ids is not None else ""]
                for name, spec in specs.items():
                    label: Any = ""
                    if name in labels:
                        label = labels[name][i].item()
                        if label != label or (spec.kind == "classification" and label < 0):
                            label = ""  # a missing label
                    row.append(label)
                    if spec.kind == "classification":
                        row += [int(values[name][i].argmax()), *values[name][i].tolist()]
                    else:
                        row.append(float(values[name][i]))
                rows.append(row)
    header = ["split", "index", "id"]
    for name, spec in specs.items():
        prefix = f"{name}:" if several else ""
        header.append(f"{prefix}target")
        if spec.kind == "classification":
            header += [f"{prefix}predicted_class"] + [f"{prefix}prob_{k}"
                                                      for k in range(spec.size)]
        else:
            header.append(f"{prefix}prediction")
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    tmp.replace(path)
    return path


def robustness(
    model: str | Path,
    output: str | Path,
    data_spec: str | None = None,
    *,
    split: str = "test",
    data_options: dict[str, Any] | None = None,
    verbose: bool = False,
) -> tuple[Any, dict[str, Path]]:
    """Run :func:`mfm.robustness.evaluate` on a trained model and write its report.

    Returns:
        The :class:`~mfm.robustness.RobustnessReport` and the paths of the written files.
    """
    from mfm import robustness as rb

    with quiet_lightning(verbose):
        module = load_trained(model)
        _, data = data_for(module, data_spec, data_options)
        report = rb.evaluate(module, data, split, seed=module.config.train.seed)
    return report, rb.write_report(report, Path(output))
