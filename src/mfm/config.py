"""Configuration of a Multimodal Factorization Model run.

Three dataclasses, kept apart from the modelling code (as Hugging Face keeps its
configurations apart from its models):

* :class:`ModelConfig`: sizes and dropouts of the encoders, the Memory Fusion Network,
  the factor MLPs, the decoders and the prediction head;
* :class:`LossConfig`: the weights of the objective's terms and the MMD settings;
* :class:`TrainConfig`: optimisation and stopping.

:class:`MFMConfig` bundles the three. Per-modality settings are looked up by modality
name in ``modalities`` / ``recon_weights`` and fall back to ``default_modality`` /
``default_recon_weight``, so a configuration works for any set of modality names.

YAML round trip: :func:`load_config` / :func:`save_config`. Loading validates every key
and type and raises :class:`ConfigError` with a one-line message naming the file, the key,
what was expected and what was found.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml

OutputKind = Literal["auto", "regression", "classification"]
RegressionLoss = Literal["l1", "mse"]
MMDKernel = Literal["seed", "imq", "rbf"]
MMDEstimator = Literal["biased", "unbiased"]
Alignment = Literal["auto", "aligned", "resample"]
CellKind = Literal["lstm", "lsthm"]
ModelKind = Literal["mfm", "mfn", "ef-lstm", "lf", "mfm-no-zy", "mfm-zy-only", "mfm-disc"]


DEFAULT_TARGET = "label"
"""Name of the target when the data has one unnamed label."""


KINDS_WITHOUT_SURROGATE = ("mfn", "ef-lstm", "lf")
"""Model kinds without a surrogate path: ``train.modality_dropout`` must stay 0."""


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type or range."""


@dataclass
class ModalityConfig:
    """Sizes for one modality.

    Attributes:
        hidden: hidden size of this modality's recurrent cell in the MFN and of its
            private LSTM encoder.
        z: size of the modality-specific generative factor Z_a,m.
        f: size of F_m = G_m(Z_a,m).
        dropout: dropout inside G_m (Z_a,m -> F_m).
        decoder_hidden: hidden size of the LSTM decoder that rebuilds this modality;
            ``None`` means the same as ``hidden``.
        encoder_hidden: hidden size of the private LSTM encoder (Z_a,m); ``None`` means
            the same as ``hidden``.
    """

    hidden: int = 32
    z: int = 16
    f: int = 16
    dropout: float = 0.2
    decoder_hidden: int | None = None
    encoder_hidden: int | None = None


@dataclass
class OutputConfig:
    """The prediction head on F_y.

    Attributes:
        kind: ``regression`` (one real value per sample), ``classification``, or ``auto``:
            take the task of the data (the saved, resolved configuration names it).
        size: number of classes for classification (>= 2); 1 for regression; ignored by
            ``auto``, which takes it from the data.
        loss: regression loss, ``l1`` (the paper's choice for sentiment) or ``mse``;
            classification always uses cross-entropy.
        hidden: width of the head's hidden layer; ``None`` means ``fy``.
        dropout: dropout inside the head (F_y -> Y).
    """

    kind: OutputKind = "auto"
    size: int = 1
    loss: RegressionLoss = "l1"
    hidden: int | None = None
    dropout: float = 0.0


@dataclass
class TargetConfig:
    """One named prediction target and its head on F_y.

    Attributes:
        kind: ``regression``, ``classification`` or ``auto`` (the data's kind for it).
        size: number of classes for classification (>= 2); 1 for regression; ``auto``
            takes it from the data.
        loss: regression loss (``l1`` or ``mse``); ``None`` means ``model.output.loss``.
            Classification always uses cross-entropy.
    """

    kind: OutputKind = "auto"
    size: int = 1
    loss: RegressionLoss | None = None


@dataclass
class ModelConfig:
    """Architecture of the MFM.

    Attributes:
        kind: the MFM (``mfm``), a baseline or an ablation in the same engine (see
            :mod:`mfm.model.baselines`): ``mfn`` (the MFN alone), ``ef-lstm`` (early
            fusion), ``lf`` (late fusion), ``mfm-no-zy`` (no multimodal factor),
            ``mfm-zy-only`` (no modality-specific factors), ``mfm-disc`` (no decoders, no
            MMD).
        modalities: per-modality sizes by name; modalities not named here use
            ``default_modality``.
        default_modality: sizes of any modality without its own entry.
        zy: size of the multimodal discriminative factor Z_y.
        fy: size of F_y = G_y(Z_y).
        fy_dropout: dropout inside G_y.
        memory: size of the MFN's multi-view gated memory.
        attention_hidden: width of the MFN's Delta-memory attention MLPs.
        attention_dropout: dropout in those MLPs.
        gate_hidden: width of the MFN's two memory-gate MLPs.
        gate_dropout: dropout in those MLPs.
        cell: ``lstm`` (the public MFN code: plain LSTM cells) or ``lsthm`` (the MFN
            paper: each cell's gates also read the previous memory).
        surrogate_hidden: width of the surrogate MLPs that infer an absent modality's
            Z_a,m from the present ones.
        alignment: how the MFN sees modalities. ``aligned``: step t of every modality is
            read at MFN step t (all modalities must have the same padded length).
            ``resample``: each sample's valid steps of every modality are averaged into
            ``mfn_steps`` equal segments (see :mod:`mfm.model.mfn`). ``auto``: aligned
            when the padded lengths agree, resample otherwise.
        mfn_steps: the common length used by ``resample``.
        fast_recurrence: run recurrences with the hand-written scans of
            :mod:`mfm.model.recurrent`: the MFN's staged fast path (``lstm`` cells) and
            the private encoders of wide inputs (``d_m >= 4 * encoder hidden``); the same
            computation, faster on CPU. False: the MFN's reference per-step loop and
            ``nn.LSTM`` everywhere (for checking; with dropout the MFN's two paths draw
            different random masks).
        native_kernels: let those scans run their time loops with the C++ kernels of
            :mod:`mfm.model.native` (CPU, float32/float64), compiled once per machine on
            first use; the same results as the Python loops, faster. Where no C++
            compiler is found mfm warns once and uses the Python loops. The environment
            variable ``MFM_NATIVE=0`` turns them off too.
        output: the prediction head: its width, dropout and default regression loss, and
            (for a single target) its kind and size.
        targets: one head per named target (:class:`TargetConfig`); empty means one
            target described by ``output``. Filled from the data by
            :func:`resolve_output`, so a saved configuration names every target.
    """

    kind: ModelKind = "mfm"
    modalities: dict[str, ModalityConfig] = field(default_factory=dict)
    default_modality: ModalityConfig = field(default_factory=ModalityConfig)
    zy: int = 16
    fy: int = 16
    fy_dropout: float = 0.0
    memory: int = 32
    attention_hidden: int = 64
    attention_dropout: float = 0.2
    gate_hidden: int = 64
    gate_dropout: float = 0.2
    cell: CellKind = "lstm"
    surrogate_hidden: int = 64
    alignment: Alignment = "auto"
    mfn_steps: int = 32
    fast_recurrence: bool = True
    native_kernels: bool = True
    output: OutputConfig = field(default_factory=OutputConfig)
    targets: dict[str, TargetConfig] = field(default_factory=dict)

    def modality(self, name: str) -> ModalityConfig:
        """Return the sizes of modality ``name`` (its own entry or the default)."""
        return self.modalities.get(name, self.default_modality)

    def target_specs(self) -> dict[str, TargetConfig]:
        """Every target with its kind, size and loss filled in (``loss`` never ``None``).

        Without ``targets``, one target named ``label`` described by ``output``.
        """
        out = self.output
        if not self.targets:
            return {DEFAULT_TARGET: TargetConfig(kind=out.kind, size=out.size, loss=out.loss)}
        return {name: dataclasses.replace(t, loss=t.loss or out.loss)
                for name, t in self.targets.items()}


@dataclass
class LossConfig:
    """Weights of the objective's terms.

    ``L = pred + sum_m lambda_m * recon_m + lambda_mmd * sum_z MMD(z)``.

    Attributes:
        recon_weights: lambda_m per modality name.
        default_recon_weight: lambda_m of modalities without an entry.
        lambda_mmd: weight of the summed MMD terms (one per factor).
        mmd_kernel: ``seed`` (exp(-mean squared difference / d), the reference code's
            kernel), ``imq`` (multi-scale inverse multiquadratic) or ``rbf``.
        mmd_estimator: ``biased`` (the reference code's) or ``unbiased``.
        lambda_missing: weight of ``missing_loss`` (surrogate vs full latents) and of the
            reconstruction of removed modalities from their surrogates; used when
            ``train.modality_dropout`` removes modalities.
        detach_missing_targets: compare surrogates with detached full-data latents.
        weighting: how the terms are combined: ``fixed`` (the lambdas above, the paper),
            ``uncertainty`` (learned log-variances, Kendall et al. 2018), ``gradnorm``
            (Chen et al. 2018) or ``dwa`` (Liu et al. 2019); see
            :mod:`mfm.losses.weighting`.
        weighted_terms: name prefixes of the terms an automatic strategy weights (the rest
            keep their fixed lambdas); by default the prediction and the reconstructions.
            MMD terms stay fixed: an MMD estimate can be tiny or (unbiased) negative, which
            drives learned weights to infinity.
        uncertainty_positive: the positive variant ``0.5 L / sigma^2 + log(1 + sigma^2)``.
        gradnorm_alpha: GradNorm's asymmetry.
        dwa_temperature: DWA's softmax temperature.
        weighting_lr: learning rate of learnable weights (``null``: Adam's).
    """

    recon_weights: dict[str, float] = field(default_factory=dict)
    default_recon_weight: float = 1.0
    lambda_mmd: float = 1.0
    mmd_kernel: MMDKernel = "seed"
    mmd_estimator: MMDEstimator = "biased"
    lambda_missing: float = 1.0
    detach_missing_targets: bool = True
    weighting: Literal["fixed", "uncertainty", "gradnorm", "dwa"] = "fixed"
    weighted_terms: list[str] = field(default_factory=lambda: ["pred", "recon_"])
    uncertainty_positive: bool = False
    gradnorm_alpha: float = 1.5
    dwa_temperature: float = 2.0
    weighting_lr: float | None = None

    def recon_weight(self, name: str) -> float:
        """Return lambda_m of modality ``name``."""
        return self.recon_weights.get(name, self.default_recon_weight)


@dataclass
class TrainConfig:
    """Optimisation and stopping.

    Attributes:
        batch_size: samples per batch.
        learning_rate: Adam's learning rate (really applied).
        weight_decay: Adam's L2 weight decay.
        max_epochs: upper bound on training epochs.
        patience: epochs without improvement of the validation loss before stopping.
        lr_patience: epochs without improvement before ReduceLROnPlateau lowers the rate.
        lr_factor: ReduceLROnPlateau's multiplicative factor.
        monitor: validation quantity that selects the best checkpoint, drives early
            stopping and ReduceLROnPlateau: ``pred`` (the prediction loss) or ``loss``
            (the whole objective, whose MMD terms use random prior draws).
        modality_dropout: per modality name, the probability of removing that modality
            from a training sample (surrogate training; see :mod:`mfm.model.mfm`).
        default_modality_dropout: the probability for modalities without an entry.
        seed: seed of every random number generator used in the run.
        num_workers: DataLoader worker processes.
        gradient_clip: clip the gradient norm to this value; ``None`` disables clipping.
    """

    batch_size: int = 32
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    max_epochs: int = 20
    patience: int = 8
    lr_patience: int = 4
    lr_factor: float = 0.5
    monitor: Literal["pred", "loss"] = "pred"
    modality_dropout: dict[str, float] = field(default_factory=dict)
    default_modality_dropout: float = 0.0
    seed: int = 0
    num_workers: int = 0
    gradient_clip: float | None = None

    def dropout_for(self, name: str) -> float:
        """Probability of removing modality ``name`` from a training sample."""
        return self.modality_dropout.get(name, self.default_modality_dropout)


@dataclass
class DataConfig:
    """Where the data comes from and how it is read.

    Attributes:
        spec: a path (MMSA or MultiBench pickle, MFN h5 folder, generic ``.npz`` file or
            folder) or ``synthetic[:key=value,...]``; see :func:`mfm.data.load`.
        format: ``auto`` (detected from the path) or one of ``synthetic``, ``npz``,
            ``mfn``, ``mmsa``, ``multibench``.
        modalities: the modalities to use, in order; empty means all in the data.
        label: how to read labels: ``auto`` (one-hot rows -> classes, integers -> classes,
            floats -> regression), ``regression``, ``classes`` (integer class indices) or
            ``onehot``.
        threshold: binarise a scale into two classes: ``label >= threshold`` is class 1
            (ICT-MMMO: 3.5).
        target: which label(s) to learn, a comma-separated list of ``[name=]source``;
            a source is ``labels`` (the file's main labels), another named target of the
            file (e.g. CH-SIMS ``regression_labels_T``), a column index of the labels
            when they have several columns, or ``all`` (every column). Several entries
            give several targets, one head each (e.g.
            ``M=regression_labels,T=regression_labels_T``); a target's name defaults to
            its source (``y<k>`` for column ``k``). ``None``: the main labels, one target.
        text_feature: MMSA pickles: which key feeds the ``text`` modality (e.g.
            ``text_bert``); default ``text``.
        nonfinite: what to do with NaN and +-inf features: ``error`` (refuse, with counts)
            or ``zero`` (replace with 0 and warn with counts).
        normalize: z-score every feature with statistics fitted on the training split's
            valid steps (stored with the model, applied to every split and at evaluation).
    """

    spec: str = "synthetic"
    format: Literal["auto", "synthetic", "npz", "mfn", "mmsa", "multibench"] = "auto"
    modalities: list[str] = field(default_factory=list)
    label: Literal["auto", "regression", "classes", "onehot"] = "auto"
    threshold: float | None = None
    target: str | None = None
    text_feature: str | None = None
    nonfinite: Literal["error", "zero"] = "error"
    normalize: bool = True


@dataclass
class MFMConfig:
    """A whole run: data, model, loss and training settings."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        """Return the configuration as plain dicts, lists and scalars."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> MFMConfig:
        """Build and validate a configuration from plain data.

        Args:
            data: nested dicts as written in YAML; missing keys take their defaults.
            source: name used in error messages (usually the file path).

        Raises:
            ConfigError: on an unknown key, a wrong type or an out-of-range value.
        """
        config = _build(cls, data, source, "")
        config.validate(source)
        return config

    def validate(self, source: str = "config") -> None:
        """Check value ranges; raise :class:`ConfigError` naming the key on failure."""
        checks: list[tuple[str, bool, str]] = []
        m = self.model
        for name, mod in [("default_modality", m.default_modality)] + [
            (f"modalities.{k}", v) for k, v in m.modalities.items()
        ]:
            for attr in ("hidden", "z", "f"):
                checks.append((f"model.{name}.{attr}", getattr(mod, attr) >= 1, ">= 1"))
            for attr in ("decoder_hidden", "encoder_hidden"):
                value = getattr(mod, attr)
                checks.append((f"model.{name}.{attr}", value is None or value >= 1,
                               ">= 1 or null"))
            checks.append((f"model.{name}.dropout", 0.0 <= mod.dropout < 1.0, "in [0, 1)"))
        for attr in ("zy", "fy", "memory", "attention_hidden", "gate_hidden", "mfn_steps",
                     "surrogate_hidden"):
            checks.append((f"model.{attr}", getattr(m, attr) >= 1, ">= 1"))
        for attr in ("fy_dropout", "attention_dropout", "gate_dropout"):
            checks.append((f"model.{attr}", 0.0 <= getattr(m, attr) < 1.0, "in [0, 1)"))
        out = m.output
        if out.kind == "classification":
            checks.append(("model.output.size", out.size >= 2, ">= 2 classes for classification"))
        elif out.kind == "regression":
            checks.append(("model.output.size", out.size == 1, "1 for regression"))
        for name, target in m.targets.items():
            key = f"model.targets.{name}.size"
            if target.kind == "classification":
                checks.append((key, target.size >= 2, ">= 2 classes for classification"))
            elif target.kind == "regression":
                checks.append((key, target.size == 1, "1 for regression"))
            if not name or "/" in name or "." in name or "," in name:
                raise ConfigError(f"{source}: model.targets: invalid target name {name!r} "
                                  "(expected a non-empty name without '/', '.' or ',')")
        checks.append(("model.output.dropout", 0.0 <= out.dropout < 1.0, "in [0, 1)"))
        checks.append(
            ("model.output.hidden", out.hidden is None or out.hidden >= 1, ">= 1 or null")
        )
        lo = self.loss
        checks.append(("loss.lambda_mmd", lo.lambda_mmd >= 0, ">= 0"))
        checks.append(("loss.default_recon_weight", lo.default_recon_weight >= 0, ">= 0"))
        for k, v in lo.recon_weights.items():
            checks.append((f"loss.recon_weights.{k}", v >= 0, ">= 0"))
        t = self.train
        for attr in ("batch_size", "max_epochs"):
            checks.append((f"train.{attr}", getattr(t, attr) >= 1, ">= 1"))
        checks.append(("train.learning_rate", t.learning_rate > 0, "> 0"))
        checks.append(("train.weight_decay", t.weight_decay >= 0, ">= 0"))
        checks.append(("train.patience", t.patience >= 1, ">= 1"))
        checks.append(("train.lr_patience", t.lr_patience >= 0, ">= 0"))
        checks.append(("train.lr_factor", 0.0 < t.lr_factor < 1.0, "in (0, 1)"))
        checks.append(("train.num_workers", t.num_workers >= 0, ">= 0"))
        checks.append(("train.default_modality_dropout",
                       0.0 <= t.default_modality_dropout < 1.0, "in [0, 1)"))
        for k, v in t.modality_dropout.items():
            checks.append((f"train.modality_dropout.{k}", 0.0 <= v < 1.0, "in [0, 1)"))
        if m.kind in KINDS_WITHOUT_SURROGATE:
            # These baselines read an absent modality as masked; they have no surrogate path
            # to train, so removing modalities during training has nothing to teach.
            expected = (f"0 with model.kind {m.kind!r} (it has no surrogate path for missing "
                        "modalities)")
            checks.append(("train.default_modality_dropout", t.default_modality_dropout == 0,
                           expected))
            for k, v in t.modality_dropout.items():
                checks.append((f"train.modality_dropout.{k}", v == 0, expected))
        checks.append(("loss.lambda_missing", lo.lambda_missing >= 0, ">= 0"))
        checks.append(("loss.gradnorm_alpha", lo.gradnorm_alpha >= 0, ">= 0"))
        checks.append(("loss.dwa_temperature", lo.dwa_temperature > 0, "> 0"))
        checks.append(("loss.weighting_lr", lo.weighting_lr is None or lo.weighting_lr > 0,
                       "> 0 or null"))
        checks.append(
            ("train.gradient_clip", t.gradient_clip is None or t.gradient_clip > 0, "> 0 or null")
        )
        for key, ok, expected in checks:
            if not ok:
                found = _lookup(self, key)
                raise ConfigError(f"{source}: {key}: expected {expected}, found {found!r}")


def _lookup(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = obj[part] if isinstance(obj, dict) else getattr(obj, part)
    return obj


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def _build(tp: Any, value: Any, source: str, key: str) -> Any:
    """Convert ``value`` to type ``tp`` recursively, raising ConfigError on mismatch."""
    where = f"{source}: {key or '<top level>'}"
    if dataclasses.is_dataclass(tp):
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, found {_describe(value)}")
        hints = get_type_hints(tp)
        names = {f.name for f in dataclasses.fields(tp)}
        unknown = sorted(set(value) - names)
        if unknown:
            path = f"{key}.{unknown[0]}" if key else str(unknown[0])
            raise ConfigError(
                f"{source}: {path}: unknown key (expected one of: {', '.join(sorted(names))})"
            )
        kwargs = {
            k: _build(hints[k], v, source, f"{key}.{k}" if key else k) for k, v in value.items()
        }
        return tp(**kwargs)
    origin = get_origin(tp)
    args = get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        return _build(non_none[0], value, source, key)
    if origin is Literal:
        if value not in args:
            choices = ", ".join(repr(a) for a in args)
            raise ConfigError(f"{where}: expected one of {choices}, found {_describe(value)}")
        return value
    if origin is list:
        if value is None:
            return []
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, found {_describe(value)}")
        (item_type,) = args
        return [_build(item_type, v, source, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, found {_describe(value)}")
        key_type, value_type = args
        return {
            _build(key_type, k, source, f"{key}.{k}"): _build(value_type, v, source, f"{key}.{k}")
            for k, v in value.items()
        }
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, found {_describe(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, found {_describe(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, found {_describe(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, found {_describe(value)}")
        return value
    raise TypeError(f"unsupported configuration type {tp!r} at {key}")  # pragma: no cover


def load_config(path: str | Path) -> MFMConfig:
    """Read and validate a YAML configuration file.

    Raises:
        ConfigError: the file is missing, is not YAML, or holds an invalid value.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration ({exc.strerror})") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{line}") from exc
    return MFMConfig.from_dict(data or {}, source=str(path))


def save_config(config: MFMConfig, path: str | Path) -> None:
    """Write ``config`` as YAML; :func:`load_config` reads it back to an equal config."""
    Path(path).write_text(
        yaml.safe_dump(config.to_dict(), sort_keys=False, default_flow_style=False),
        encoding="utf-8",
    )


def with_overrides(config: MFMConfig, data_spec: str | None = None,
                   data: dict[str, Any] | None = None, **train_overrides: Any) -> MFMConfig:
    """Return a copy of ``config`` with data and :class:`TrainConfig` fields replaced.

    Args:
        data_spec: a new ``data.spec``.
        data: other :class:`DataConfig` fields.
        train_overrides: :class:`TrainConfig` fields.

    ``None`` values are ignored, so command-line options that were not given leave the
    configuration as it is.
    """
    changes = {k: v for k, v in train_overrides.items() if v is not None}
    data_changes = {k: v for k, v in (data or {}).items() if v is not None}
    if data_spec is not None:
        data_changes["spec"] = data_spec
    merged = {**config.to_dict()}
    merged["train"] = {**merged["train"], **changes}
    merged["data"] = {**merged["data"], **data_changes}
    return MFMConfig.from_dict(merged, source="command line")


def resolve_output(config: MFMConfig, targets: dict[str, tuple[str, int]] | str,
                   num_classes: int = 1) -> MFMConfig:
    """Fit the prediction heads to the data's targets.

    Args:
        config: the run configuration.
        targets: the data's targets in order: name -> ``(kind, num_classes)``; or, for
            one target named ``label``, its kind (with ``num_classes``).
        num_classes: the class count when ``targets`` is a kind.

    ``auto`` takes the data's kind and class count; an explicit kind must agree with it.
    Without ``model.targets`` every data target gets a head described by ``model.output``;
    with it, its names must be the data's. The result names every target in
    ``model.targets``, and ``model.output`` carries the first target's kind and size.

    Raises:
        ConfigError: the configuration asks for another task than the data has.
    """
    if isinstance(targets, str):
        targets = {DEFAULT_TARGET: (targets, num_classes)}
    out = config.model.output
    given = config.model.targets
    if given and set(given) != set(targets):
        raise ConfigError(
            f"config: model.targets: names {sorted(given)} differ from the data's targets "
            f"{sorted(targets)}"
        )
    resolved: dict[str, TargetConfig] = {}
    for name, (kind, num_classes) in targets.items():
        size = num_classes if kind == "classification" else 1
        want = given.get(name) if given else TargetConfig(kind=out.kind, size=out.size)
        assert want is not None
        key = f"model.targets.{name}" if given else "model.output"
        if want.kind == "auto":
            want = dataclasses.replace(want, kind=kind, size=size)  # type: ignore[arg-type]
        elif want.kind != kind or want.size != size:
            raise ConfigError(
                f"config: {key}: the data's target {name!r} is {kind} with {size} output(s), "
                f"but the configuration asks for {want.kind} with {want.size}; set kind: auto"
            )
        resolved[name] = want
    first = next(iter(resolved.values()))
    out = dataclasses.replace(out, kind=first.kind, size=first.size)
    return dataclasses.replace(
        config, model=dataclasses.replace(config.model, output=out, targets=resolved))
