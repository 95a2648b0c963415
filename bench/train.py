"""Benchmark: training ``mfm`` against MMSA's MFM on MOSI-shaped data, and ``mfm`` at MOSEI scale.

What it does:

1. Writes synthetic MMSA-layout pickles shaped like aligned CMU-MOSI (1284/229/686 samples,
   50 steps, text/audio/vision 768/5/20, ragged lengths, ``regression_labels`` in
   [-3, 3] driven by a factor shared by all modalities; see ``bench/_data.py``): one with
   FRONT padding (leading zeros, what MMSA's last-state encoders need) and one with END
   padding holding the very same valid steps.
2. Checks how ``mfm`` reads the front-padded pickle (lengths and valid steps compared with
   the end-padded one, which is unambiguous).
3. Trains, each run in a fresh subprocess, interleaved per seed: ``mfm`` (front), MMSA
   (front), ``mfm`` (end). ``mfm`` runs ``mfm.run.fit`` with the ``mosi-mmsa`` preset on
   the features as they are, as MMSA reads them (``--normalize no``, the default here;
   ``mfm``'s own default standardises each feature); MMSA runs ``MMSA==2.2.1`` from
   its own venv (``bench/.mmsa-venv``, created by ``bench/setup_mmsa.sh`` when missing)
   with ``get_config_regression('mfm', 'mosi')``. Both train a fixed number of epochs
   (``--epochs``), keep the epoch with the lowest validation L1 and score it on test.
   Each run reports per-epoch wall time (train pass, validation pass, whole epoch with
   checkpointing), peak RSS (VmHWM of the worker at its end: data, model, training and
   test) and test metrics. Timings are medians over the epochs after the first and then
   over runs.
4. Times ``mfm`` alone at MOSEI scale (16,326 training samples, dims 768/74/35).

Prints tables, writes ``bench/results/train.json`` and ends with exactly::

    epoch_time_ratio_mmsa_over_mfm=R
    peak_rss_ratio_mmsa_over_mfm=R

(R > 1: ``mfm`` is better; ``nan`` when MMSA could not run.)
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
import _data  # noqa: E402

DEFAULT_MMSA_VENV = _common.BENCH_DIR / ".mmsa-venv"
MOSEI_SIZES = {"train": 16326, "valid": 1871, "test": 500}
ACCURACY_KEYS = ("MAE", "Non0_acc_2", "Corr", "Has0_acc_2")


# ----------------------------------------------------------------------------- MMSA venv


def _mmsa_importable(python: Path) -> bool:
    if not python.exists():
        return False
    proc = subprocess.run([str(python), "-c", "import MMSA"], capture_output=True, timeout=300)
    return proc.returncode == 0


def find_mmsa(python: Path, setup: bool, log_dir: Path) -> tuple[Path | None, str]:
    """MMSA's interpreter, creating its venv with ``setup_mmsa.sh`` when allowed."""
    if _mmsa_importable(python):
        return python, f"using {python}"
    if not setup:
        return None, f"{python} cannot import MMSA and --no-setup was given"
    venv = python.parent.parent
    print(f"creating MMSA's venv in {venv} (bench/setup_mmsa.sh; a few minutes)...", flush=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / "setup_mmsa.log"
    with log.open("w") as handle:
        proc = subprocess.run(["bash", str(_common.BENCH_DIR / "setup_mmsa.sh"), str(venv)],
                              stdout=handle, stderr=subprocess.STDOUT, timeout=3600)
    if proc.returncode == 0 and _mmsa_importable(python):
        return python, f"created {venv}"
    tail = " | ".join(log.read_text().strip().splitlines()[-3:])
    return None, f"could not create MMSA's venv (exit {proc.returncode}; see {log}): {tail}"


# ----------------------------------------------------------------------------- data check


def check_padding(front: Path, end: Path) -> dict[str, Any]:
    """Does ``mfm`` read the front-padded pickle as it reads the end-padded one?

    The two files hold the same valid steps; the end-padded one is read unambiguously.
    """
    import torch

    from mfm.config import DataConfig
    from mfm.data import load

    a = load(DataConfig(spec=str(front), normalize=False))
    b = load(DataConfig(spec=str(end), normalize=False))
    report: dict[str, Any] = {"modalities": {}}
    ok = True
    for name in b["train"].features:
        fa, fb = a["train"], b["train"]
        same_len = bool(torch.equal(fa.lengths[name], fb.lengths[name]))
        same_x = bool(torch.equal(fa.features[name], fb.features[name]))
        mismatched = int((fa.lengths[name] != fb.lengths[name]).sum())
        report["modalities"][name] = {
            "lengths_equal": same_len, "features_equal": same_x,
            "samples_with_other_length": mismatched,
            "front_mean_length": float(fa.lengths[name].double().mean()),
            "true_mean_length": float(fb.lengths[name].double().mean()),
        }
        ok = ok and same_len and same_x
    report["front_read_like_end"] = ok
    return report


# ----------------------------------------------------------------------------- runs


def _worker_cmd(framework: str, python: Path, data: Path, epochs: int, seed: int,
                threads: int, normalize: str) -> list[str]:
    script = "_mfm_worker.py" if framework == "mfm" else "_mmsa_worker.py"
    cmd = [str(python), str(_common.BENCH_DIR / script), "--data", str(data),
           "--epochs", str(epochs), "--seed", str(seed), "--threads", str(threads)]
    return cmd + (["--normalize", normalize] if framework == "mfm" else [])


def run_one(framework: str, python: Path, data: Path, padding: str, epochs: int, seed: int,
            threads: int, log_dir: Path, tag: str, normalize: str = "no") -> dict[str, Any]:
    cmd = _worker_cmd(framework, python, data, epochs, seed, threads, normalize)
    log = log_dir / f"{tag}-{framework}-{padding}-seed{seed}.log"
    print(f"  {framework:4s} {padding:5s} seed {seed} ...", end=" ", flush=True)
    result = _common.run_worker(cmd, _common.thread_env(threads), timeout=3 * 3600, log=log)
    result["padding"] = padding
    result["data"] = tag
    epoch_s = [e["epoch_s"] for e in result["epochs"]]
    print(f"{len(epoch_s)} epochs, {' '.join(f'{s:.1f}' for s in epoch_s)} s; "
          f"test MAE {result['test'].get('MAE', float('nan')):.3f}; "
          f"peak RSS {result['peak_rss_bytes'] / 1e9:.2f} GB; "
          f"cpu/wall {result['cpu_per_wall']:.2f}", flush=True)
    return result


def _steady(epochs: list[dict[str, float]], key: str) -> float:
    """Median of ``key`` over the epochs after the first (all epochs when only one)."""
    values = [e[key] for e in (epochs[1:] if len(epochs) > 1 else epochs)]
    return _common.median(values)


def timing_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "runs": len(runs),
        "epoch_s": _common.median(_steady(r["epochs"], "epoch_s") for r in runs),
        "train_s": _common.median(_steady(r["epochs"], "train_s") for r in runs),
        "valid_s": _common.median(_steady(r["epochs"], "valid_s") for r in runs),
        "first_epoch_s": _common.median(r["epochs"][0]["epoch_s"] for r in runs),
        "peak_rss_bytes": _common.median(r["peak_rss_bytes"] for r in runs),
        "cpu_per_wall": _common.median(r["cpu_per_wall"] for r in runs),
        "per_run_epoch_s": [[round(e["epoch_s"], 3) for e in r["epochs"]] for r in runs],
    }


def accuracy_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"seeds": [r["seed"] for r in runs]}
    for key in ACCURACY_KEYS:
        values = [float(r["test"][key]) for r in runs if r["test"].get(key) is not None]
        out[key] = {
            "mean": statistics.fmean(values) if values else float("nan"),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values,
        }
    return out


def _pm(summary: dict[str, Any], key: str) -> str:
    entry = summary[key]
    return f"{entry['mean']:.3f} ± {entry['std']:.3f}"


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Seconds per epoch, peak RSS and accuracy: mfm against MMSA's MFM on "
                    "MOSI-shaped synthetic data; mfm alone at MOSEI scale.",
        epilog="The last two lines are epoch_time_ratio_mmsa_over_mfm=R and "
               "peak_rss_ratio_mmsa_over_mfm=R (R > 1: mfm is better).",
    )
    parser.add_argument("--quick", action="store_true",
                        help="tiny data, one short mfm run per case, no MMSA; no timing claims")
    parser.add_argument("--threads", type=int, default=2, help="torch/OpenMP threads (2)")
    parser.add_argument("--epochs", type=int, default=4,
                        help="epochs per run, the same cap for both frameworks (4)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds = repetitions (3)")
    parser.add_argument("--mosei-epochs", type=int, default=1,
                        help="epochs of the MOSEI-scale mfm run; 0 skips it (1)")
    parser.add_argument("--mmsa-end-seeds", type=int, default=0,
                        help="also train MMSA on the end-padded data with this many seeds (0)")
    parser.add_argument("--mmsa-python", type=Path, default=DEFAULT_MMSA_VENV / "bin" / "python",
                        help="interpreter with MMSA 2.2.1 (default bench/.mmsa-venv/bin/python)")
    parser.add_argument("--no-setup", action="store_true",
                        help="do not create MMSA's venv when it is missing")
    parser.add_argument("--skip-mmsa", action="store_true", help="run the mfm side only")
    parser.add_argument("--normalize", choices=("no", "yes"), default="no",
                        help="standardise mfm's features (MMSA reads them as they are: no)")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON output (default bench/results/train.json; quick: "
                             "train-quick.json)")
    args = parser.parse_args(argv)

    quick = args.quick
    epochs = 1 if quick else args.epochs
    seeds = list(range(1 if quick else args.seeds))
    mosei_epochs = min(args.mosei_epochs, 1) if quick else args.mosei_epochs
    out = args.out or _common.RESULTS_DIR / ("train-quick.json" if quick else "train.json")
    log_dir = _common.RESULTS_DIR / ("logs-quick" if quick else "logs")
    log_dir.mkdir(parents=True, exist_ok=True)
    info = _common.machine_info(args.threads)
    print(f"# training benchmark ({info['date_utc']}, {info['cpu']}, {info['cpu_count']} CPUs, "
          f"{args.threads} threads, load avg {info.get('loadavg_at_start')})", flush=True)
    if quick:
        print(_common.QUICK_NOTE)

    mmsa_py: Path | None = None
    if quick or args.skip_mmsa:
        mmsa_status = "skipped (--quick)" if quick else "skipped (--skip-mmsa)"
    else:
        mmsa_py, mmsa_status = find_mmsa(args.mmsa_python, not args.no_setup, log_dir)
    print(f"MMSA: {mmsa_status}", flush=True)

    mfm_py = Path(sys.executable)
    tmp = Path(tempfile.mkdtemp(prefix="mfm-bench-data-"))
    try:
        if quick:
            mosi = _data.SyntheticSpec(sizes={"train": 96, "valid": 32, "test": 32}, steps=10,
                                       min_length=3)
            mosei = _data.SyntheticSpec(sizes={"train": 128, "valid": 32, "test": 32},
                                        dims=_data.MOSEI_DIMS, steps=10, min_length=3,
                                        padding="end")
        else:
            mosi = _data.SyntheticSpec(sizes=dict(_data.MOSI_SIZES))
            mosei = _data.SyntheticSpec(sizes=dict(MOSEI_SIZES), dims=_data.MOSEI_DIMS,
                                        padding="end")
        front = _data.write_pickle(mosi, tmp / "mosi_front.pkl")
        end = _data.write_pickle(
            _data.SyntheticSpec(**{**mosi.__dict__, "padding": "end"}), tmp / "mosi_end.pkl")
        print(f"data: {front.name} and {end.name} ({front.stat().st_size / 1e6:.0f} MB each)",
              flush=True)
        padding_check = check_padding(front, end)
        print(f"mfm reads the front-padded pickle like the end-padded one: "
              f"{padding_check['front_read_like_end']}", flush=True)

        runs: list[dict[str, Any]] = []
        for seed in seeds:
            runs.append(run_one("mfm", mfm_py, front, "front", epochs, seed, args.threads,
                                log_dir, "mosi", args.normalize))
            if mmsa_py is not None:
                try:
                    runs.append(run_one("mmsa", mmsa_py, front, "front", epochs, seed,
                                        args.threads, log_dir, "mosi"))
                except (RuntimeError, subprocess.TimeoutExpired) as exc:
                    print(f"\nMMSA run failed: {exc}", flush=True)
                    mmsa_status = f"run failed: {str(exc).splitlines()[0]}"
                    mmsa_py = None
            runs.append(run_one("mfm", mfm_py, end, "end", epochs, seed, args.threads,
                                log_dir, "mosi", args.normalize))
        if mmsa_py is not None:
            for seed in seeds[: args.mmsa_end_seeds]:
                runs.append(run_one("mmsa", mmsa_py, end, "end", epochs, seed, args.threads,
                                    log_dir, "mosi"))

        mosei_run = None
        if mosei_epochs > 0:
            for path in (front, end):
                path.unlink()
            mosei_path = _data.write_pickle(mosei, tmp / "mosei_end.pkl")
            print(f"data: {mosei_path.name} ({mosei_path.stat().st_size / 1e9:.2f} GB)",
                  flush=True)
            mosei_run = run_one("mfm", mfm_py, mosei_path, "end", mosei_epochs, 0,
                                args.threads, log_dir, "mosei", args.normalize)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def select(framework: str, padding: str) -> list[dict[str, Any]]:
        return [r for r in runs if r["framework"] == framework and r["padding"] == padding]

    groups = {(fw, pad): select(fw, pad) for fw in ("mfm", "mmsa") for pad in ("front", "end")}
    timing = {f"{fw}/{pad}": timing_summary(rs) for (fw, pad), rs in groups.items() if rs}
    accuracy = {f"{fw}/{pad}": accuracy_summary(rs) for (fw, pad), rs in groups.items() if rs}

    gb = 1e9
    timing_rows = []
    for key, t in timing.items():
        timing_rows.append([key.replace("/", ", ") + " padding", t["runs"], t["epoch_s"],
                            t["train_s"], t["valid_s"], t["first_epoch_s"],
                            t["peak_rss_bytes"] / gb, t["cpu_per_wall"]])
    accuracy_rows = []
    for key, a in accuracy.items():
        accuracy_rows.append([key.replace("/", ", ") + " padding", epochs, len(a["seeds"]),
                              _pm(a, "MAE"), _pm(a, "Non0_acc_2"), _pm(a, "Corr")])
    tables: dict[str, str] = {}
    tables["timing"] = _common.table(
        ["framework, data", "runs", "s/epoch", "train pass s", "validation s", "first epoch s",
         "peak RSS GB", "CPU s per wall s"], timing_rows)
    tables["accuracy"] = _common.table(
        ["framework, data", "epochs", "seeds", "test MAE", "test Non0_acc_2", "test Corr"],
        accuracy_rows)
    if mosei_run is not None:
        t = timing_summary([mosei_run])
        n_train = mosei.sizes["train"]
        tables["mosei"] = _common.table(
            ["framework", "train samples", "dims t/a/v", "epochs", "s/epoch", "train pass s",
             "validation s", "samples/s (train)", "peak RSS GB"],
            [["mfm", n_train, "/".join(map(str, mosei.dims)), mosei_run["epochs_run"],
              t["epoch_s"], t["train_s"], t["valid_s"], n_train / t["train_s"],
              t["peak_rss_bytes"] / gb]])
    check_rows = [[m, v["lengths_equal"], v["features_equal"], v["samples_with_other_length"],
                   v["front_mean_length"], v["true_mean_length"]]
                  for m, v in padding_check["modalities"].items()]
    tables["padding_check"] = _common.table(
        ["modality", "lengths as end-padded", "steps as end-padded", "samples with other length",
         "mean length read (front)", "true mean length"], check_rows)

    mfm_t = timing.get("mfm/front", {})
    mmsa_t = timing.get("mmsa/front", {})
    time_ratio = _common.ratio(mmsa_t.get("epoch_s", float("nan")),
                               mfm_t.get("epoch_s", float("nan")))
    rss_ratio = _common.ratio(mmsa_t.get("peak_rss_bytes", float("nan")),
                              mfm_t.get("peak_rss_bytes", float("nan")))

    print()
    if quick:
        print(_common.QUICK_NOTE)
    print(f"MMSA: {mmsa_status}")
    over = f"epochs 2..{epochs}" if epochs > 1 else "the single epoch"
    print(f"\nSeconds per training epoch (median over {over} and {len(seeds)} runs; "
          f"epoch = train pass + validation pass + checkpointing), peak RSS of the whole run "
          f"(fresh process each), {args.threads} threads:")
    print(tables["timing"])
    print(f"\nTest accuracy after {epochs} epochs (best validation L1 epoch), mean ± sd over "
          f"seeds {seeds}; mfm features standardised: {args.normalize}:")
    print(tables["accuracy"])
    print("\nHow mfm reads the FRONT-padded pickle (train split) compared with the same data "
          "END-padded:")
    print(tables["padding_check"])
    if "mosei" in tables:
        print(f"\nmfm at MOSEI scale (synthetic, {mosei.sizes} samples, end padding, "
              "mosi-mmsa preset):")
        print(tables["mosei"])

    if runs:
        info.setdefault("torch", runs[0].get("torch"))
    _common.write_json(out, {
        "benchmark": "train",
        "quick": quick,
        "machine": info,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "epochs": epochs,
        "seeds": seeds,
        "mfm_normalize": args.normalize,
        "mmsa_status": mmsa_status,
        "data": {"mosi": {**mosi.__dict__}, "mosei": {**mosei.__dict__} if mosei_epochs else None},
        "padding_check": padding_check,
        "timing": timing,
        "accuracy": accuracy,
        "mosei": mosei_run,
        "runs": runs,
        "tables_markdown": tables,
        "epoch_time_ratio_mmsa_over_mfm": time_ratio,
        "peak_rss_ratio_mmsa_over_mfm": rss_ratio,
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
    })
    print(f"\nwrote {out}")
    print(f"epoch_time_ratio_mmsa_over_mfm={time_ratio:.4g}")
    print(f"peak_rss_ratio_mmsa_over_mfm={rss_ratio:.4g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
