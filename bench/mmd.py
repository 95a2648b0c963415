"""Benchmark: the seed's MMD (written out below as the reference) against ``mfm``'s.

Both compute the biased MMD with the seed's kernel ``exp(-mean_d((x - y)^2) / d)``
between ``z`` (``n x d``, requires grad) and a fixed ``N(0, I)`` sample of the same shape;
``mfm`` as ``mfm.losses.mmd.mmd(z, prior, kernel="seed")``.

Measured per case ``(n, d)``:

* time of forward + backward: warm-up, then repetitions alternating between the two
  implementations (seed, mfm, seed, mfm, ...), median;
* peak memory of one forward + backward, each in a fresh subprocess per
  ``(implementation, n, d)``:

  - *allocated*: the peak of live tensor bytes reported by the PyTorch profiler's memory
    timeline (``torch.profiler.profile(profile_memory=True)``, every allocation and free
    of the CPU allocator), minus the inputs. Exact and deterministic, so this is the
    number the ratio uses;
  - *RSS*: ``VmHWM`` after the call minus ``VmRSS`` before it, with the peak reset just
    before (``/proc/self/clear_refs``) and glibc told to serve large blocks with mmap
    (``MALLOC_MMAP_THRESHOLD_``) so that freed memory leaves the process. Includes
    allocator and library overheads; a cross-check.

The seed builds ``n x n x d`` float32 tensors (several at once): cases whose single such
tensor would exceed ``--mem-cap-gb`` are skipped and marked so in the table.

The last two lines printed are machine-readable (``n=1024, d=128``; R > 1 means ``mfm`` is
better)::

    mmd_peak_memory_ratio_seed_over_mfm=R
    mmd_time_ratio_seed_over_mfm=R
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

IMPLS = ("seed", "mfm")
FULL_NS = (64, 256, 1024, 4096)
FULL_DS = (16, 128)
QUICK_NS = (16, 64)
QUICK_DS = (8,)
RATIO_CASE = (1024, 128)


# ----------------------------------------------------------------------------- reference


def compute_kernel(x: Any, y: Any) -> Any:
    """The seed's kernel matrix: ``exp(-mean_d((x_i - y_j)^2) / d)`` via ``(n, m, d)`` tiles."""
    import torch

    x_size = x.size(0)
    y_size = y.size(0)
    dim = x.size(1)
    x = x.unsqueeze(1)
    y = y.unsqueeze(0)
    tiled_x = x.expand(x_size, y_size, dim)
    tiled_y = y.expand(x_size, y_size, dim)
    kernel_input = (tiled_x - tiled_y).pow(2).mean(2) / float(dim)
    return torch.exp(-kernel_input)


def loss_mmd(zy: Any, prior: Any) -> Any:
    """The seed's biased MMD between ``zy`` and a prior sample of the same shape."""
    return (compute_kernel(prior, prior).mean() + compute_kernel(zy, zy).mean()
            - 2.0 * compute_kernel(prior, zy).mean())


def _mfm_mmd(z: Any, prior: Any) -> Any:
    from mfm.losses.mmd import mmd

    return mmd(z, prior, kernel="seed")


def _impl(name: str) -> Any:
    return loss_mmd if name == "seed" else _mfm_mmd


def _inputs(n: int, d: int, seed: int = 0) -> tuple[Any, Any]:
    import torch

    gen = torch.Generator().manual_seed(seed * 100_003 + n * 31 + d)
    z = (0.3 + 1.2 * torch.randn(n, d, generator=gen)).requires_grad_(True)
    prior = torch.randn(n, d, generator=gen)
    return z, prior


def seed_tensor_bytes(n: int, d: int) -> int:
    """Size of one ``(n, n, d)`` float32 tensor of the seed's kernel."""
    return n * n * d * 4


# ----------------------------------------------------------------------------- memory worker


def _memory_worker(impl: str, n: int, d: int, threads: int) -> dict[str, Any]:
    """One forward + backward in this (fresh) process; both memory measures."""
    _common.pin_threads(threads)
    import torch

    _common.pin_threads(threads)
    fn = _impl(impl)
    if impl == "mfm":
        import mfm.losses.mmd  # noqa: F401 - imported before the baseline is read
    # Warm-up on a tiny input: lazy library initialisation is not the call's memory.
    warm = torch.randn(4, d, requires_grad=True)
    fn(warm, torch.randn(4, d)).backward()
    z, prior = _inputs(n, d)
    # RSS: reset the high-water mark to the current RSS, run once, read it back.
    reset_ok = _common.reset_peak_rss()
    before = _common.rss_bytes()
    fn(z, prior).backward()
    rss_peak = _common.peak_rss_bytes() - before if reset_ok else None
    z.grad = None
    # Allocator: the profiler's memory timeline of a second call.
    allocated = None
    error = None
    try:
        from torch.profiler import ProfilerActivity, profile
        from torch.profiler._memory_profiler import Action

        with profile(activities=[ProfilerActivity.CPU], profile_memory=True,
                     record_shapes=True, with_stack=True) as prof:
            fn(z, prior).backward()
        live = peak = preexisting = 0
        for _, action, (key, _version), size in prof._memory_profile().timeline:
            if key.device.type != "cpu":
                continue
            if action == Action.PREEXISTING:
                preexisting += size
                live += size
            elif action == Action.CREATE:
                live += size
            elif action == Action.DESTROY:
                live -= size
            peak = max(peak, live)
        allocated = peak - preexisting
    except Exception as exc:  # noqa: BLE001 - private profiler API: report, fall back to RSS
        error = f"{type(exc).__name__}: {exc}"[:200]
    return {"impl": impl, "n": n, "d": d, "allocated_peak_bytes": allocated,
            "rss_peak_bytes": rss_peak, "profiler_error": error}


def measure_memory(impl: str, n: int, d: int, threads: int) -> dict[str, Any]:
    env = _common.thread_env(threads)
    env["MALLOC_MMAP_THRESHOLD_"] = str(128 * 1024)
    env["MALLOC_TRIM_THRESHOLD_"] = str(128 * 1024)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-worker",
           f"{impl},{n},{d}", "--threads", str(threads)]
    return _common.run_worker(cmd, env, timeout=1800)


# ----------------------------------------------------------------------------- timing


def measure_time(n: int, d: int, impls: list[str], min_reps: int, budget_s: float
                 ) -> dict[str, dict[str, Any]]:
    """Interleaved forward+backward timings; median per implementation."""
    import torch

    z, prior = _inputs(n, d)
    fns = {name: _impl(name) for name in impls}
    for fn in fns.values():  # warm-up
        fn(z, prior).backward()
        z.grad = None
    times: dict[str, list[float]] = {name: [] for name in impls}
    start = time.perf_counter()
    reps = 0
    while reps < min_reps or (time.perf_counter() - start < budget_s and reps < 200):
        order = impls if reps % 2 == 0 else impls[::-1]
        for name in order:
            t0 = time.perf_counter()
            fns[name](z, prior).backward()
            times[name].append(time.perf_counter() - t0)
            z.grad = None
        reps += 1
    values = {}
    with torch.no_grad():
        for name, fn in fns.items():
            values[name] = float(fn(z.detach().double(), prior.double()))
    return {name: {"median_s": _common.median(times[name]), "reps": len(times[name]),
                   "value_float64": values[name]} for name in impls}


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Time and peak memory of the seed's MMD against mfm's (kernel='seed').",
        epilog="The last two lines are mmd_peak_memory_ratio_seed_over_mfm=R and "
               "mmd_time_ratio_seed_over_mfm=R (n=1024, d=128; R > 1: mfm is better).",
    )
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes, a few seconds; prints no timing claims")
    parser.add_argument("--threads", type=int, default=2, help="torch/OpenMP threads (2)")
    parser.add_argument("--mem-cap-gb", type=float, default=4.0,
                        help="skip seed cases whose (n, n, d) float32 tensor exceeds this (4)")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON output (default bench/results/mmd.json; quick: mmd-quick.json)")
    parser.add_argument("--memory-worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.memory_worker:
        impl, n, d = args.memory_worker.split(",")
        _common.emit_result(_memory_worker(impl, int(n), int(d), args.threads))
        return 0

    _common.pin_threads(args.threads)
    import torch

    _common.pin_threads(args.threads)
    ns, ds = (QUICK_NS, QUICK_DS) if args.quick else (FULL_NS, FULL_DS)
    ratio_case = (QUICK_NS[-1], QUICK_DS[-1]) if args.quick else RATIO_CASE
    cap = int(args.mem_cap_gb * 1024**3)
    out = args.out or _common.RESULTS_DIR / ("mmd-quick.json" if args.quick else "mmd.json")
    info = _common.machine_info(args.threads)
    print(f"# MMD benchmark ({info['date_utc']}, {info['cpu']}, {info['cpu_count']} CPUs, "
          f"{args.threads} threads, torch {torch.__version__}, load avg "
          f"{info.get('loadavg_at_start')})", flush=True)
    if args.quick:
        print(_common.QUICK_NOTE)

    cases: list[dict[str, Any]] = []
    for d in ds:
        for n in ns:
            seed_ok = seed_tensor_bytes(n, d) <= cap
            impls = ["seed", "mfm"] if seed_ok else ["mfm"]
            budget = 0.3 if args.quick else 3.0
            timing = measure_time(n, d, impls, min_reps=3 if args.quick else 5, budget_s=budget)
            memory = {impl: measure_memory(impl, n, d, args.threads) for impl in impls}
            case: dict[str, Any] = {"n": n, "d": d, "seed_tensor_bytes": seed_tensor_bytes(n, d),
                                    "seed_skipped": not seed_ok}
            for impl in IMPLS:
                if impl in impls:
                    case[impl] = {**timing[impl],
                                  "allocated_peak_bytes": memory[impl]["allocated_peak_bytes"],
                                  "rss_peak_bytes": memory[impl]["rss_peak_bytes"],
                                  "profiler_error": memory[impl]["profiler_error"]}
            if seed_ok:
                a, b = case["seed"]["value_float64"], case["mfm"]["value_float64"]
                case["rel_diff_float64"] = abs(a - b) / max(abs(a), 1e-30)
            cases.append(case)
            print(f"  n={n:5d} d={d:4d} done" + ("" if seed_ok else " (seed skipped)"),
                  flush=True)

    mib = 1024.0**2
    rows = []
    for c in cases:
        seed = c.get("seed")
        mfm_c = c["mfm"]

        def ms(entry: dict[str, Any] | None) -> Any:
            return None if entry is None else entry["median_s"] * 1e3

        def mem(entry: dict[str, Any] | None, key: str) -> Any:
            if entry is None or entry[key] is None:
                return None
            return entry[key] / mib

        skipped = f"skipped (> {args.mem_cap_gb:g} GB)"
        rows.append([
            c["n"], c["d"],
            ms(seed) if seed else skipped, ms(mfm_c),
            _common.ratio(seed["median_s"], mfm_c["median_s"]) if seed else None,
            mem(seed, "allocated_peak_bytes") if seed else skipped,
            mem(mfm_c, "allocated_peak_bytes"),
            _common.ratio(seed["allocated_peak_bytes"] or float("nan"),
                          mfm_c["allocated_peak_bytes"] or float("nan")) if seed else None,
            mem(seed, "rss_peak_bytes") if seed else skipped,
            mem(mfm_c, "rss_peak_bytes"),
            "-" if c.get("rel_diff_float64") is None else f"{c['rel_diff_float64']:.1e}",
        ])
    headers = ["n", "d", "seed ms", "mfm ms", "time ratio", "seed alloc MiB", "mfm alloc MiB",
               "alloc ratio", "seed RSS MiB", "mfm RSS MiB", "rel diff (f64)"]
    print()
    if args.quick:
        print(_common.QUICK_NOTE)
    print("Forward + backward of the biased MMD, seed kernel, z and prior of shape (n, d); "
          "median time; peak memory of one call (allocated: profiler memory timeline, "
          "inputs excluded; RSS: VmHWM delta in a fresh process).")
    print(_common.table(headers, rows))

    target = next(c for c in cases if (c["n"], c["d"]) == ratio_case)
    mem_ratio = _common.ratio(target["seed"]["allocated_peak_bytes"] or float("nan"),
                              target["mfm"]["allocated_peak_bytes"] or float("nan"))
    time_ratio = _common.ratio(target["seed"]["median_s"], target["mfm"]["median_s"])
    _common.write_json(out, {
        "benchmark": "mmd",
        "quick": args.quick,
        "machine": info,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "mem_cap_gb": args.mem_cap_gb,
        "ratio_case": {"n": ratio_case[0], "d": ratio_case[1]},
        "memory_method": "torch.profiler memory timeline (allocated, inputs excluded); "
                         "RSS = VmHWM after - VmRSS before, fresh process per case",
        "cases": cases,
        "mmd_peak_memory_ratio_seed_over_mfm": mem_ratio,
        "mmd_time_ratio_seed_over_mfm": time_ratio,
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
    })
    print(f"\nwrote {out}")
    print(f"mmd_peak_memory_ratio_seed_over_mfm={mem_ratio:.4g}")
    print(f"mmd_time_ratio_seed_over_mfm={time_ratio:.4g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

