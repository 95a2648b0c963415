"""Worker: one MMSA (PyPI ``MMSA==2.2.1``) MFM training run in a fresh process.

Runs in MMSA's own virtual environment (``bench/.mmsa-venv``, see ``bench/setup_mmsa.sh``)
and is started by ``bench/train.py``. ``MMSA_run`` cannot run without CUDA (it calls
``torch.cuda.set_device``), so this does what ``MMSA.run._run`` does with the same building
blocks: ``get_config_regression('mfm', 'mosi')``, ``MMDataLoader``, ``AMIO``,
``ATIO().getTrain(args)``, ``do_train``, then the best checkpoint's ``do_test`` on the test
split. MMSA has no epoch limit (it stops after ``early_stop`` epochs without a better
validation loss); the epoch cap is applied by setting ``early_stop`` to 0 once the last
wanted validation pass has run.

Prints one JSON line: per-epoch timings, test metrics, peak RSS (VmHWM at the end).
"""

from __future__ import annotations

import argparse
import logging
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
    parser.add_argument("--verbose", action="store_true", help="MMSA's log on stderr")
    args = parser.parse_args(argv)

    _common.pin_threads(args.threads)
    t_import = time.perf_counter()
    import torch
    from MMSA.config import get_config_regression
    from MMSA.data_loader import MMDataLoader
    from MMSA.models import AMIO
    from MMSA.trains import ATIO
    from MMSA.utils import assign_gpu, count_parameters, setup_seed

    _common.pin_threads(args.threads)
    import_s = time.perf_counter() - t_import

    logger = logging.getLogger("MMSA")
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.INFO if args.verbose else logging.WARNING)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)

    with tempfile.TemporaryDirectory(prefix="mmsa-bench-") as tmp:
        config = get_config_regression("mfm", "mosi")
        config["featurePath"] = str(Path(args.data).resolve())
        config["device"] = assign_gpu([])
        config["train_mode"] = "regression"
        config["custom_feature"] = None
        config["feature_T"] = None
        config["feature_A"] = None
        config["feature_V"] = None
        config["model_save_path"] = Path(tmp) / "mfm-mosi.pth"
        config["cur_seed"] = args.seed
        config["early_stop"] = args.epochs + 1  # never stops on its own before the cap

        setup_seed(args.seed)
        dataloader = MMDataLoader(config, 0)
        model = AMIO(config).to(config["device"])
        trainer = ATIO().getTrain(config)

        marks: dict[str, Any] = {"start": 0.0, "val": []}
        original_test = trainer.do_test

        def timed_test(model: Any, loader: Any, mode: str = "VAL", **kw: Any) -> Any:
            begin = time.perf_counter()
            result = original_test(model, loader, mode=mode, **kw)
            end = time.perf_counter()
            if mode == "VAL":
                marks["val"].append((begin, end))
                if len(marks["val"]) >= args.epochs:
                    config["early_stop"] = 0  # do_train returns after this epoch
            return result

        trainer.do_test = timed_test  # type: ignore[method-assign]
        start = time.perf_counter()
        marks["start"] = start
        trainer.do_train(model, dataloader)
        fit_end = time.perf_counter()
        model.load_state_dict(torch.load(config["model_save_path"], weights_only=True))
        model.to(config["device"])
        test_start = time.perf_counter()
        test = original_test(model, dataloader["test"], mode="TEST")
        test_s = time.perf_counter() - test_start

    epochs = []
    previous_end = start
    for begin, end in marks["val"]:
        # The interval between validation ends holds the train pass, the validation pass
        # and MMSA's saving of an improved model (as mfm's epoch holds its checkpointing).
        epochs.append({"epoch_s": end - previous_end, "train_s": begin - previous_end,
                       "valid_s": end - begin})
        previous_end = end
    _common.emit_result({
        "framework": "mmsa",
        "seed": args.seed,
        "epochs": epochs,
        "epochs_run": len(epochs),
        "fit_s": fit_end - start,
        "test_s": test_s,
        "import_s": import_s,
        "test": {k: float(v) for k, v in test.items() if k != "Loss"},
        "parameters": count_parameters(model),
        "peak_rss_bytes": _common.peak_rss_bytes(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
