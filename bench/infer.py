"""Benchmark: ``mfm`` prediction throughput (samples per second) on MOSI-shaped inputs.

The model is built from the ``mosi-mmsa`` preset for aligned CMU-MOSI shapes (50 steps,
text/audio/vision 768/5/20), put in eval mode, and run under ``torch.no_grad()`` on
random inputs with ragged lengths, at batch 1 and batch 256. Two paths are timed:

* ``forward``: ``MFM.forward`` (what a validation or test pass runs): every encoder, the
  decoders and the heads;
* ``predict-only``: ``MFM.predict`` (what ``MFMModule.predict_step`` and ``mfm predict``
  run): the encoders and the heads, no decoders. Its output is checked against
  ``forward``'s prediction.

Repetitions alternate between the paths; the median time per call gives samples/s.
The last line is ``infer_samples_per_s_batch256=R`` (``predict-only`` path, what
``mfm predict`` runs).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402

DIMS = {"text": 768, "audio": 5, "vision": 20}


def build(steps: int) -> tuple[Any, Any]:
    """The MOSI model of the ``mosi-mmsa`` preset (eval mode) and its config."""
    import mfm.run as run
    from mfm.config import load_config, resolve_output
    from mfm.model.mfm import MFM

    config = load_config(Path(run.__file__).parent / "presets" / "mosi-mmsa.yaml")
    config = resolve_output(config, "regression", 1)
    model = MFM(config.model, DIMS).eval()
    return model, config


def make_inputs(batch: int, steps: int, seed: int = 0) -> tuple[dict[str, Any], dict[str, Any]]:
    import torch

    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(max(1, steps // 6), steps + 1, (batch,), generator=gen)
    mask = (torch.arange(steps)[None, :] < lengths[:, None]).unsqueeze(-1)
    inputs = {n: torch.randn(batch, steps, d, generator=gen) * mask for n, d in DIMS.items()}
    return inputs, {n: lengths.clone() for n in DIMS}


def predict_only(model: Any, inputs: dict[str, Any], lengths: dict[str, Any]) -> Any:
    """The first target's prediction by ``MFM.predict`` (no decoders)."""
    return next(iter(model.predict(inputs, lengths).values()))


def measure(model: Any, batch: int, steps: int, budget_s: float, min_reps: int
            ) -> dict[str, Any]:
    import torch

    inputs, lengths = make_inputs(batch, steps)
    paths = {
        "forward": lambda: model(inputs, lengths).prediction,
        "predict-only": lambda: predict_only(model, inputs, lengths),
    }
    with torch.no_grad():
        outputs = {name: fn() for name, fn in paths.items()}  # warm-up
        agree = float((outputs["forward"] - outputs["predict-only"]).abs().max())
        times: dict[str, list[float]] = {name: [] for name in paths}
        start = time.perf_counter()
        reps = 0
        while reps < min_reps or (time.perf_counter() - start < budget_s and reps < 2000):
            order = list(paths) if reps % 2 == 0 else list(paths)[::-1]
            for name in order:
                t0 = time.perf_counter()
                paths[name]()
                times[name].append(time.perf_counter() - t0)
            reps += 1
    result: dict[str, Any] = {"batch": batch, "max_abs_diff": agree}
    for name, values in times.items():
        med = _common.median(values)
        result[name] = {"median_s": med, "reps": len(values), "samples_per_s": batch / med}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Prediction throughput of mfm (MOSI shapes, eval mode, no grad) at batch "
                    "1 and 256.",
        epilog="The last line is infer_samples_per_s_batch256=R (predict-only path).",
    )
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes, a few seconds; prints no timing claims")
    parser.add_argument("--threads", type=int, default=2, help="torch/OpenMP threads (2)")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON output (default bench/results/infer.json; quick: "
                             "infer-quick.json)")
    args = parser.parse_args(argv)

    _common.pin_threads(args.threads)
    import torch

    _common.pin_threads(args.threads)
    out = args.out or _common.RESULTS_DIR / ("infer-quick.json" if args.quick else "infer.json")
    steps = 8 if args.quick else 50
    batches = (1, 256)
    budget = 0.3 if args.quick else 5.0
    info = _common.machine_info(args.threads)
    print(f"# inference benchmark ({info['date_utc']}, {info['cpu']}, {info['cpu_count']} "
          f"CPUs, {args.threads} threads, torch {torch.__version__}, load avg "
          f"{info.get('loadavg_at_start')})", flush=True)
    if args.quick:
        print(_common.QUICK_NOTE)
    model, _ = build(steps)
    params = sum(p.numel() for p in model.parameters())
    results = [measure(model, b, steps, budget, 3 if args.quick else 10) for b in batches]

    rows = []
    for r in results:
        f, p = r["forward"], r["predict-only"]
        rows.append([r["batch"], f["samples_per_s"], f["median_s"] * 1e3, p["samples_per_s"],
                     p["median_s"] * 1e3, _common.ratio(f["median_s"], p["median_s"]),
                     f["reps"]])
    headers = ["batch", "forward samples/s", "forward ms/call", "predict-only samples/s",
               "predict-only ms/call", "speed-up", "reps"]
    text = _common.table(headers, rows)
    print()
    if args.quick:
        print(_common.QUICK_NOTE)
    print(f"mfm prediction, mosi-mmsa preset ({params:,} parameters), {steps} steps, dims "
          f"768/5/20, eval mode, torch.no_grad(), {args.threads} threads; median per call:")
    print(text)
    last = results[-1]["predict-only"]["samples_per_s"]
    _common.write_json(out, {
        "benchmark": "infer",
        "quick": args.quick,
        "machine": info,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "steps": steps,
        "parameters": params,
        "results": results,
        "tables_markdown": {"infer": text},
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
    })
    print(f"\nwrote {out}")
    print(f"infer_samples_per_s_batch256={last:.4g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
