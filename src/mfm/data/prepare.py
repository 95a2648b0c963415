"""From :class:`~mfm.data.raw.RawData` to tensors: validation at the boundary, cleaning,
labels, missing modalities and normalisation.

Order of work, each step failing with a one-line :class:`~mfm.data.errors.DataError` that
names the file and key:

1. splits: ``train``, ``valid`` and ``test`` must exist and be non-empty;
2. modalities: the selection must exist; a modality absent from a split is kept for that
   split as zeros with length 0 (marked absent in the presence mask) and a warning;
3. each array: numeric dtype, rank 2 ``(N, d)`` (a length-1 sequence) or 3 ``(N, T, d)``,
   the same ``d`` in every split, as many samples as the labels, lengths of shape ``(N,)``
   within ``[0, T]``;
4. non-finite values: counted per modality and split; ``nonfinite=error`` refuses them,
   ``zero`` replaces them with 0 and warns;
5. lengths: given (with ``auto`` padding the span starts at the first non-zero step), or
   inferred from all-zero padding steps on the side the format says
   (``auto``: leading and trailing all-zero steps are both padding, as real MFN releases
   use either side); when the modalities share a padded length (word-aligned data) a step
   is padding only when it is zero in every modality, so they keep one timeline; then
   every sample's valid steps are moved to the front (the layout of a batch);
6. labels: one or more named targets (``DataConfig.target``), each classes (one-hot rows,
   integers, or a scale cut at ``threshold``) or regression; a NaN label is a missing
   label (the sample counts for the other targets), an infinite one is an error;
7. normalisation: per-feature mean and standard deviation over the training split's
   valid steps, applied to the valid steps of every split (padding stays zero).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from mfm.config import DEFAULT_TARGET, DataConfig
from mfm.data.batch import label_mask
from mfm.data.dataset import SPLITS, DataInfo, MultimodalData, MultimodalSplit
from mfm.data.errors import DataError
from mfm.data.raw import RawData, RawSplit

Stats = dict[str, dict[str, list[float]]]


class DataWarning(UserWarning):
    """Data was usable but not as expected (absent modality, replaced non-finite values)."""


@dataclass
class Report:
    """What preparation found, for ``mfm data inspect``.

    Attributes:
        nonfinite: ``(split, modality)`` -> (NaN count, infinite count) before cleaning.
        absent: split -> modalities missing from that split's files.
    """

    nonfinite: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)
    absent: dict[str, list[str]] = field(default_factory=dict)


def _where(raw: RawData, split: RawSplit, split_name: str, key: str) -> str:
    return split.where(key, f"{raw.source}: {split_name}/{key}")


def _select_modalities(raw: RawData, wanted: list[str]) -> list[str]:
    found: list[str] = []
    for split in raw.splits.values():
        for name in split.features:
            if name not in found:
                found.append(name)
    if not wanted:
        if not found:
            raise DataError(f"{raw.source}: no modality arrays found")
        return found
    unknown = [m for m in wanted if m not in found]
    if unknown:
        raise DataError(
            f"{raw.source}: modality {unknown[0]!r} not found (available: {', '.join(found)})"
        )
    return list(dict.fromkeys(wanted))


def _as_features(x: np.ndarray, where: str) -> np.ndarray:
    x = np.asarray(x)
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
        raise DataError(f"{where}: expected a numeric array, found dtype {x.dtype}")
    if np.issubdtype(x.dtype, np.complexfloating):
        raise DataError(f"{where}: expected real numbers, found dtype {x.dtype}")
    if x.ndim == 2:
        x = x[:, None, :]
    if x.ndim != 3:
        raise DataError(
            f"{where}: expected a (samples, steps, features) or (samples, features) array, "
            f"found shape {x.shape}"
        )
    if x.shape[1] == 0 or x.shape[2] == 0:
        raise DataError(f"{where}: expected at least one step and one feature, found shape "
                        f"{x.shape}")
    return x.astype(np.float32, copy=False)


def target_entries(target: str | None) -> list[tuple[str, str]]:
    """Parse ``DataConfig.target`` into ``(name, source)`` pairs (see its docstring).

    Raises:
        DataError: an empty entry, or a name used twice.
    """
    if target is None:
        return [(DEFAULT_TARGET, "labels")]
    entries: list[tuple[str, str]] = []
    for item in target.split(","):
        name, _, source = item.strip().rpartition("=")
        source = source.strip()
        name = name.strip() or (f"y{source}" if source.isdigit() else source)
        if not source or not name or "/" in name or "." in name:
            raise DataError(f"data.target: invalid entry {item.strip()!r} (expected [name=]source "
                            "with a non-empty name without '/' or '.')")
        entries.append((name, source))
    names = [n for n, _ in entries]
    if len(set(names)) != len(names):
        raise DataError(f"data.target: target names repeat in {target!r}")
    return entries


def _numeric_labels(labels: object, where: str) -> np.ndarray:
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.number) and labels.dtype != np.bool_:
        raise DataError(f"{where}: expected numeric labels, found dtype {labels.dtype}")
    if labels.ndim > 1 and all(s == 1 for s in labels.shape[1:]):
        labels = labels.reshape(labels.shape[0])
    if labels.ndim == 0 or labels.ndim > 2:
        raise DataError(f"{where}: expected labels of shape (samples,) or (samples, k), found "
                        f"{labels.shape}")
    infinite = int(np.isinf(labels).sum()) if labels.dtype.kind == "f" else 0
    if infinite:
        raise DataError(f"{where}: {infinite} infinite labels; expected a finite label or NaN "
                        "(missing) for every sample")
    return labels


def _complete_rows(labels: np.ndarray) -> np.ndarray:
    """The rows of ``(N, k)`` labels without a NaN (a row with one is a missing label)."""
    return labels[~np.isnan(labels).any(axis=1)] if labels.dtype.kind == "f" else labels


def _is_onehot(labels: np.ndarray) -> bool:
    return (labels.ndim == 2 and labels.shape[1] > 1 and bool(np.all((labels == 0) | (labels == 1)))
            and bool(np.all(labels.sum(axis=1) == 1)))


def _split_targets(raw: RawData, split: RawSplit, split_name: str,
                   cfg: DataConfig) -> dict[str, tuple[np.ndarray, str]]:
    """The split's label array of every target (``(N,)``, or ``(N, k)`` one-hot rows).

    Returns:
        target name -> (labels, where they came from).
    """
    result: dict[str, tuple[np.ndarray, str]] = {}
    selection = cfg.target if cfg.target is not None else raw.default_target
    for name, source in target_entries(selection):
        if source == "labels" or source == "all" or source.isdigit():
            if split.labels is None:
                raise DataError(f"{raw.source}: {split_name}: no labels found (expected labels "
                                "for every split)")
            where = _where(raw, split, split_name, "labels")
            labels = _numeric_labels(split.labels, where)
            if source == "labels":
                if labels.ndim == 2 and not (cfg.label in ("auto", "onehot")
                                             and _is_onehot(_complete_rows(labels))):
                    if cfg.label == "onehot":
                        raise DataError(f"{where}: expected one-hot rows, found values that "
                                        "are not")
                    raise DataError(
                        f"{where}: labels have {labels.shape[1]} columns that are not one-hot; "
                        "choose one with --target COLUMN, or all with --target all"
                    )
                result[name] = (labels, where)
            elif source == "all":
                columns = labels.reshape(labels.shape[0], -1)
                for k in range(columns.shape[1]):
                    result[f"y{k}" if name == "all" else f"{name}{k}"] = (columns[:, k], where)
            else:
                column = int(source)
                width = labels.shape[1] if labels.ndim == 2 else 1
                if column >= width:
                    raise DataError(f"{where}: target column {column} out of range "
                                    f"(labels have {width} column{'s' if width > 1 else ''})")
                result[name] = (labels[:, column] if labels.ndim == 2 else labels, where)
        else:
            if source not in split.targets:
                names = ", ".join([*(["labels"] if split.labels is not None else []),
                                   *split.targets]) or "none"
                raise DataError(
                    f"{raw.source}: {split_name}/{source}: no such target (available: {names})"
                )
            where = _where(raw, split, split_name, f"targets/{source}")
            result[name] = (_numeric_labels(split.targets[source], where), where)
    sizes = {v[0].shape[0] for v in result.values()}
    if len(sizes) != 1:
        raise DataError(f"{raw.source}: {split_name}: targets have different numbers of samples "
                        f"({', '.join(f'{k}: {v[0].shape[0]}' for k, v in result.items())})")
    return result


def _convert_labels(labels: np.ndarray, cfg: DataConfig, where: str) -> tuple[np.ndarray, str]:
    """Return ``(N,)`` labels and ``regression`` or ``classification``.

    Missing labels (NaN, or a one-hot row with a NaN) become NaN for regression and -1 for
    classification.
    """
    missing = np.isnan(labels) if labels.dtype.kind == "f" else np.zeros(labels.shape, bool)
    if labels.ndim == 2:
        rows = missing.any(axis=1)
        filled = np.where(missing, 0, labels)
        if cfg.label == "onehot" and not _is_onehot(filled[~rows]):
            raise DataError(f"{where}: expected one-hot rows, found values that are not")
        classes = filled.argmax(axis=1).astype(np.int64)
        return np.where(rows, -1, classes), "classification"
    if cfg.threshold is not None:
        return np.where(missing, -1, labels >= cfg.threshold).astype(np.int64), "classification"
    if cfg.label == "onehot":
        raise DataError(f"{where}: expected one-hot rows (samples, classes), found shape "
                        f"{labels.shape}")
    integral = np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_
    if cfg.label == "classes" or (cfg.label == "auto" and integral):
        present = labels[~missing]
        bad = (present != np.round(present)) | (present < 0)
        if bad.any():
            raise DataError(f"{where}: expected class indices 0, 1, 2, ..., found values like "
                            f"{present[bad][:1]}")
        return np.where(missing, -1, np.where(missing, 0, labels)).astype(np.int64), \
            "classification"
    return labels.astype(np.float32), "regression"


def _lengths_of(
    raw: RawData, split: RawSplit, split_name: str, name: str, x: np.ndarray
) -> np.ndarray | None:
    if name not in split.lengths:
        return None
    where = _where(raw, split, split_name, f"lengths/{name}")
    n = np.asarray(split.lengths[name])
    if n.ndim > 1 and all(s == 1 for s in n.shape[1:]):
        n = n.reshape(n.shape[0])
    if n.shape != (x.shape[0],):
        raise DataError(f"{where}: expected shape ({x.shape[0]},) (one length per sample), "
                        f"found {n.shape}")
    if (not np.issubdtype(n.dtype, np.number) or not np.all(np.isfinite(n))
            or not np.all(n == np.round(n))):
        raise DataError(f"{where}: expected finite integer lengths, found dtype {n.dtype}"
                        + ("" if np.issubdtype(n.dtype, np.integer) else " with other values"))
    if n.min() < 0 or n.max() > x.shape[1]:
        bad = int(n.max()) if n.max() > x.shape[1] else int(n.min())
        raise DataError(f"{where}: expected lengths in [0, {x.shape[1]}] (the number of steps), "
                        f"found {bad}")
    return n.astype(np.int64)


def _infer_spans(
    xs: dict[str, np.ndarray], side: str, joint: bool
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Valid spans ``(offset, length)`` from all-zero padding steps.

    ``left``: the span ends at the last step and starts at the first non-zero step;
    ``right``: it starts at step 0 and ends at the last non-zero step; ``auto``: it runs
    from the first to the last non-zero step (either side may be padded). With ``joint``
    a step counts as non-zero when any modality is non-zero there.
    """
    nonzero = {k: _nonzero_steps(v) for k, v in xs.items()}  # (N, T)
    if joint and nonzero:
        union = np.logical_or.reduce(list(nonzero.values()))
        nonzero = dict.fromkeys(nonzero, union)
    out = {}
    for name, mask in nonzero.items():
        steps = mask.shape[1]
        any_valid = mask.any(axis=1)
        first = np.where(any_valid, mask.argmax(axis=1), 0)
        last = np.where(any_valid, steps - 1 - mask[:, ::-1].argmax(axis=1), -1)
        if side == "left":
            offset, length = first, np.where(any_valid, steps - first, 0)
        elif side == "right":
            offset, length = np.zeros_like(first), last + 1
        else:
            offset, length = first, np.where(any_valid, last - first + 1, 0)
        out[name] = (offset.astype(np.int64), length.astype(np.int64))
    return out


def _to_front(x: np.ndarray, offset: np.ndarray, length: np.ndarray,
              inplace: bool = False) -> np.ndarray:
    """Move each sample's span ``[offset, offset + length)`` to the front; zero the rest.

    Args:
        x: ``(N, T, d)``; offset, length: ``(N,)``.
        inplace: ``x`` may be overwritten (the caller gives it up): a writable C-contiguous
            float32 array is then moved within itself, one sample at a time, and no
            full-size copy is made.
    """
    steps = x.shape[1]
    positions = np.arange(steps)[None, :]
    valid = positions < length[:, None]
    if inplace and x.dtype == np.float32 and x.flags.writeable and x.flags.c_contiguous:
        for i in np.flatnonzero(offset):
            start, n = int(offset[i]), int(length[i])
            x[i, :n] = x[i, start:start + n]  # numpy copies overlapping ranges correctly
        x[~valid] = 0
        return x
    if not offset.any():  # already at the front: one masked copy
        return np.where(valid[:, :, None], x, np.float32(0)).astype(np.float32, copy=False)
    index = np.clip(np.where(valid, positions + offset[:, None], 0), 0, steps - 1)
    moved = np.take_along_axis(x, index[:, :, None], axis=1).astype(np.float32, copy=False)
    moved[~valid] = 0  # in place: the copy above is the only full-size array made
    return moved


_CHUNK = 256  # samples per block when scanning feature arrays (bounds temporaries)


def _all_finite(x: np.ndarray) -> bool:
    """``np.isfinite(x).all()`` without a full-size boolean temporary."""
    return all(bool(np.isfinite(x[i:i + _CHUNK]).all()) for i in range(0, x.shape[0], _CHUNK))


def _nonzero_steps(x: np.ndarray) -> np.ndarray:
    """``(N, T)`` bool: steps of ``(N, T, d)`` with any non-zero feature (chunked)."""
    out = np.empty(x.shape[:2], dtype=bool)
    for i in range(0, x.shape[0], _CHUNK):
        np.any(x[i:i + _CHUNK] != 0, axis=2, out=out[i:i + _CHUNK])
    return out


def _fit_stats(features: dict[str, torch.Tensor], lengths: dict[str, torch.Tensor]) -> Stats:
    stats: Stats = {}
    for name, x in features.items():
        # Two passes over blocks of samples in float64 (mean, then the mean squared
        # deviation): no float64 copy of the whole array is made.
        mask = torch.arange(x.shape[1]).unsqueeze(0) < lengths[name].unsqueeze(1)
        blocks = [(x[i:i + _CHUNK], mask[i:i + _CHUNK]) for i in range(0, x.shape[0], _CHUNK)]
        count = int(mask.sum())
        if count == 0:
            mean = torch.zeros(x.shape[2], dtype=torch.float64)
            std = torch.ones(x.shape[2], dtype=torch.float64)
        else:
            mean = sum(v[m].double().sum(0) for v, m in blocks) / count
            var = sum(((v[m].double() - mean) ** 2).sum(0) for v, m in blocks) / count
            std = var.sqrt()
            std = torch.where(std < 1e-8, torch.ones_like(std), std)
        stats[name] = {"mean": mean.tolist(), "std": std.tolist()}
    return stats


def _apply_stats(x: torch.Tensor, n: torch.Tensor, stat: dict[str, list[float]],
                 name: str, inplace: bool = False) -> torch.Tensor:
    mean = torch.tensor(stat["mean"], dtype=x.dtype)
    std = torch.tensor(stat["std"], dtype=x.dtype)
    if mean.shape[0] != x.shape[2]:
        raise DataError(f"normalisation statistics of {name!r} have {mean.shape[0]} features, "
                        f"the data has {x.shape[2]}")
    mask = (torch.arange(x.shape[1]).unsqueeze(0) < n.unsqueeze(1)).unsqueeze(-1)
    out = x.sub_(mean) if inplace else x - mean
    return out.div_(std).masked_fill_(~mask, 0.0)


def prepare(raw: RawData, cfg: DataConfig, stats: Stats | None = None, *,
            consume: bool = False) -> MultimodalData:
    """Validate, clean and convert ``raw`` (see the module docstring for the rules).

    Args:
        raw: arrays as read.
        cfg: selection, label, non-finite and normalisation options.
        stats: normalisation statistics to apply instead of fitting them (a trained
            model's); ``None`` fits them on the training split when ``cfg.normalize``.
        consume: the caller gives ``raw`` up (e.g. it was just read from a file): its
            float32 feature arrays are cleaned and normalised in place and each split's
            arrays are dropped from ``raw`` once converted, so the peak memory is about
            the data's size instead of twice it. ``raw`` is left unusable.

    Raises:
        DataError: on the first problem, naming the file and key.
    """
    for split_name in SPLITS:
        if split_name not in raw.splits:
            raise DataError(f"{raw.source}: missing split {split_name!r} (expected train, valid "
                            "and test)")
    names = _select_modalities(raw, cfg.modalities)
    report = Report()
    dims: dict[str, int] = {}
    steps: dict[str, int] = {}
    # Dims and steps from the first split that has each modality.
    for split_name in SPLITS:
        split = raw.splits[split_name]
        for name in names:
            if name in split.features and name not in dims:
                x = _as_features(split.features[name], _where(raw, split, split_name, name))
                dims[name], steps[name] = x.shape[2], x.shape[1]

    prepared: dict[str, tuple[dict, dict, dict[str, np.ndarray], list[str] | None]] = {}
    kinds: dict[str, set[str]] = {}
    train_where: dict[str, str] = {}
    for split_name in SPLITS:
        split = raw.splits[split_name]
        found = _split_targets(raw, split, split_name, cfg)
        label_where = next(iter(found.values()))[1]
        size = next(iter(found.values()))[0].shape[0]
        if size == 0:
            raise DataError(f"{label_where}: empty split (expected at least one sample)")
        labels: dict[str, np.ndarray] = {}
        for target, (array, where) in found.items():
            if split_name == "train":
                train_where[target] = where
            labels[target], kind = _convert_labels(array, cfg, where)
            kinds.setdefault(target, set()).add(kind)
        xs: dict[str, np.ndarray] = {}
        given: dict[str, np.ndarray | None] = {}
        for name in names:
            where = _where(raw, split, split_name, name)
            if name not in split.features:
                report.absent.setdefault(split_name, []).append(name)
                xs[name] = np.zeros((size, steps[name], dims[name]), dtype=np.float32)
                given[name] = np.zeros(size, dtype=np.int64)
                continue
            x = _as_features(split.features[name], where)
            if x.shape[0] != size:
                raise DataError(f"{where}: {x.shape[0]} samples, but the labels ({label_where}) "
                                f"have {size}; expected the same number")
            if x.shape[2] != dims[name]:
                raise DataError(f"{where}: {x.shape[2]} features per step, expected "
                                f"{dims[name]} as in the other splits")
            if not _all_finite(x):
                bad = ~np.isfinite(x)
                nan, inf = int(np.isnan(x).sum()), int(np.isinf(x).sum())
                report.nonfinite[(split_name, name)] = (nan, inf)
                if cfg.nonfinite == "error":
                    raise DataError(
                        f"{where}: {nan} NaN and {inf} infinite values; expected finite "
                        "numbers (pass --nonfinite zero to replace them with 0)"
                    )
                x = np.where(bad, np.float32(0), x)
                del bad
            xs[name] = x
            given[name] = _lengths_of(raw, split, split_name, name, x)
        to_infer = {k: v for k, v in xs.items() if given[k] is None or raw.padding == "auto"}
        joint = len({v.shape[1] for v in xs.values()}) == 1
        spans = _infer_spans(to_infer, raw.padding, joint)
        for name in names:
            n = given[name]
            if n is None:
                continue
            steps_m = xs[name].shape[1]
            if raw.padding == "left":
                offset = steps_m - n
            elif raw.padding == "auto":
                # Given lengths, unknown side: the span starts at the first non-zero step.
                offset = np.clip(spans[name][0], 0, steps_m - n)
            else:
                offset = np.zeros_like(n)
            spans[name] = (offset, n)
        xs = {k: _to_front(v, *spans[k], inplace=consume) for k, v in xs.items()}
        if consume:  # the converted arrays are the only references left
            split.features.clear()
        lengths = {k: spans[k][1] for k in names}
        if split.ids is not None and len(split.ids) != size:
            raise DataError(f"{_where(raw, split, split_name, 'ids')}: {len(split.ids)} ids for "
                            f"{size} samples; expected one id per sample")
        prepared[split_name] = (xs, lengths, labels, split.ids)

    for split_name, absent in report.absent.items():
        warnings.warn(
            f"{raw.source}: {', '.join(absent)} missing from the {split_name} split; those "
            "samples are marked absent", DataWarning, stacklevel=2,
        )
    if report.nonfinite and cfg.nonfinite == "zero":
        counts = "; ".join(f"{s}/{m}: {n} NaN, {i} inf"
                           for (s, m), (n, i) in report.nonfinite.items())
        warnings.warn(f"{raw.source}: replaced non-finite values with 0 ({counts})",
                      DataWarning, stacklevel=2)
    targets: dict[str, tuple[str, int]] = {}
    for target, found_kinds in kinds.items():
        if len(found_kinds) != 1:
            raise DataError(f"{raw.source}: labels of {target!r} are classes in some splits and "
                            "real values in others; pass --label classes or --label regression")
        kind = found_kinds.pop()
        train_labels = prepared["train"][2][target]
        present = label_mask(torch.from_numpy(train_labels))
        if not bool(present.any()):
            raise DataError(f"{train_where[target]}: no sample has a label for target "
                            f"{target!r} (every value is missing); expected at least one")
        num_classes = 1
        if kind == "classification":
            num_classes = max(int(p[2][target].max()) for p in prepared.values()) + 1
            num_classes = max(num_classes, 2)
        targets[target] = (kind, num_classes)

    tensors: dict[str, tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]] = {}
    for split_name, (xs, lengths, _, _) in prepared.items():
        n_t = {k: torch.from_numpy(v) for k, v in lengths.items()}
        x_t = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in xs.items()}
        tensors[split_name] = (x_t, n_t)
    if stats is None and cfg.normalize:
        stats = _fit_stats(*tensors["train"])
    splits: dict[str, MultimodalSplit] = {}
    for split_name, (x_t, n_t) in tensors.items():
        if stats is not None:
            missing = [k for k in x_t if k not in stats]
            if missing:
                raise DataError(f"{raw.source}: no normalisation statistics for modality "
                                f"{missing[0]!r} (the model knows {', '.join(stats)})")
            # The arrays are this function's own (copies made by _to_front, or the
            # consumed input): normalise in place.
            x_t = {k: _apply_stats(v, n_t[k], stats[k], k, inplace=True)
                   for k, v in x_t.items()}
        labels = {k: torch.from_numpy(v) for k, v in prepared[split_name][2].items()}
        splits[split_name] = MultimodalSplit(x_t, n_t, labels, prepared[split_name][3])
    first_kind, first_classes = next(iter(targets.values()))
    info = DataInfo(input_sizes=dims, steps=steps, kind=first_kind, num_classes=first_classes,
                    name=raw.name, targets=targets)
    return MultimodalData(info=info, splits=splits, normalization=stats, report=report)
