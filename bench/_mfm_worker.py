"""Worker: one ``mfm`` training run in a fresh process (started by ``bench/train.py``).

Runs :func:`mfm.run.fit` (what ``mfm fit`` runs) on an MMSA pickle with the ``mosi-mmsa``
preset, a fixed number of epochs and a seed, and prints one JSON line with per-epoch
timings (train pass, validation pass, whole epoch), the test metrics of the best
checkpoint and the process's peak RSS (VmHWM at the end, so it covers loading the data,
training and testing).

The only intrusion into ``mfm`` is a timing callback, added by wrapping
``mfm.run.make_trainer``; the run is otherwise exactly ``fit``'s.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="MMSA pickle")
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--preset", default="mosi-mmsa")
    parser.add_argument("--normalize", choices=("yes", "no"), default="yes")
    args = parser.parse_args(argv)

    _common.pin_threads(args.threads)
    t_import = time.perf_counter()
    import lightning as L
    import torch

    import mfm.run as run
    from mfm.config import MFMConfig, load_config, with_overrides

    _common.pin_threads(args.threads)
    import_s = time.perf_counter() - t_import

    class EpochTimer(L.Callback):
        """Wall-clock times of each fitting epoch and of its validation pass."""

        def __init__(self) -> None:
            self.epochs: list[dict[str, float]] = []
            self._epoch_start = 0.0
            self._val_start = 0.0
            self._val = 0.0

        def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
            self._epoch_start = time.perf_counter()
            self._val = 0.0

        def on_validation_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
            self._val_start = time.perf_counter()

        def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
            if trainer.state.fn == "fit":
                self._val += time.perf_counter() - self._val_start

        def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
            total = time.perf_counter() - self._epoch_start
            self.epochs.append({"epoch_s": total, "train_s": total - self._val,
                                "valid_s": self._val})

    timer = EpochTimer()
    original = run.make_trainer

    def make_trainer(*a: Any, callbacks: list[Any] | None = None, **k: Any) -> L.Trainer:
        return original(*a, callbacks=[*(callbacks or []), timer], **k)

    run.make_trainer = make_trainer  # type: ignore[assignment]

    preset = Path(run.__file__).parent / "presets" / f"{args.preset}.yaml"
    config: MFMConfig = load_config(preset)
    config = with_overrides(
        config, data_spec=args.data, data={"normalize": args.normalize == "yes"},
        max_epochs=args.epochs, patience=args.epochs + 1, seed=args.seed,
    )
    with tempfile.TemporaryDirectory(prefix="mfm-bench-") as out:
        start = time.perf_counter()
        result = run.fit(config, Path(out) / "run", progress=False)
        fit_s = time.perf_counter() - start
    metrics = {k: v for k, v in result.metrics.items() if not k.startswith("valid/")}
    _common.emit_result({
        "framework": "mfm",
        "seed": args.seed,
        "epochs": timer.epochs,
        "epochs_run": len(timer.epochs),
        "fit_s": fit_s,
        "import_s": import_s,
        "test": metrics,
        "peak_rss_bytes": _common.peak_rss_bytes(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
