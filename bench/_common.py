"""Helpers shared by the benchmark scripts (standard library only).

This module is imported by the scripts in ``bench/`` and by the MMSA worker, which runs
in MMSA's own virtual environment: it must not import ``mfm``, ``torch`` or ``numpy``.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
RESULT_PREFIX = "BENCH_RESULT_JSON "
QUICK_NOTE = "QUICK MODE: tiny sizes, the numbers below are smoke-test output, not measurements."
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def thread_env(threads: int, base: dict[str, str] | None = None) -> dict[str, str]:
    """A copy of ``base`` (default: ``os.environ``) with every BLAS/OpenMP pool pinned."""
    env = dict(os.environ if base is None else base)
    for var in THREAD_VARS:
        env[var] = str(threads)
    env["TQDM_DISABLE"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def pin_threads(threads: int) -> None:
    """Pin this process's thread pools (call before importing torch, then again after)."""
    for var in THREAD_VARS:
        os.environ[var] = str(threads)
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        torch.set_num_threads(threads)
        try:
            torch.set_num_interop_threads(threads)
        except RuntimeError:  # already set or parallel work has started
            pass


def proc_status_kib(field: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` (``VmHWM``, ``VmRSS``), or ``None``."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (VmHWM, else ru_maxrss)."""
    hwm = proc_status_kib("VmHWM")
    if hwm is not None:
        return hwm * 1024
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def rss_bytes() -> int:
    """Current resident set size (VmRSS), or 0 when unknown."""
    rss = proc_status_kib("VmRSS")
    return 0 if rss is None else rss * 1024


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux ``clear_refs`` 5); True when it worked."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def emit_result(payload: dict[str, Any]) -> None:
    """Print a worker's result as one JSON line the parent can find."""
    print(RESULT_PREFIX + json.dumps(payload), flush=True)


def run_worker(
    cmd: Sequence[str], env: dict[str, str], timeout: float, log: Path | None = None
) -> dict[str, Any]:
    """Run a worker subprocess and return its JSON result (plus ``wall_s``).

    The worker's stdout and stderr go to ``log`` when given. Raises ``RuntimeError`` with the
    tail of the output when the worker fails or prints no result.
    """
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    load = os.getloadavg()
    start = time.perf_counter()
    proc = subprocess.run(
        list(cmd), env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO_DIR
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime)
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(f"$ {' '.join(cmd)}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    result = None
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            result = json.loads(line[len(RESULT_PREFIX):])
    if proc.returncode != 0 or result is None:
        tail = "\n".join((proc.stdout + "\n" + proc.stderr).strip().splitlines()[-25:])
        raise RuntimeError(f"worker {cmd[1:3]} failed (exit {proc.returncode}):\n{tail}")
    result["wall_s"] = wall
    # Contention indicators: CPU seconds the worker got per wall second, and the 1-minute
    # load average before and after it (the worker's own threads included in "after").
    result["cpu_per_wall"] = cpu / wall if wall > 0 else float("nan")
    result["loadavg_before"] = round(load[0], 2)
    result["loadavg_after"] = round(os.getloadavg()[0], 2)
    return result


def median(values: Iterable[float]) -> float:
    """Median of the finite values; NaN when there are none."""
    vals = [float(v) for v in values if v is not None and v == v]
    return statistics.median(vals) if vals else float("nan")


def fmt(value: Any, digits: int = 3) -> str:
    """A table cell: floats with ``digits`` significant-ish decimals, None as ``-``."""
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != value:
            return "nan"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}"
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table (also readable as plain text)."""
    cells = [[str(h) for h in headers]] + [[fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(cells[0], widths, strict=True)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells[1:]:
        lines.append("| " + " | ".join(c.rjust(w) for c, w in zip(row, widths, strict=True))
                     + " |")
    return "\n".join(lines)


def machine_info(threads: int) -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "date_utc": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    try:
        info["loadavg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    if "torch" in sys.modules:
        info["torch"] = sys.modules["torch"].__version__
    return info


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` as indented JSON (NaN written as null), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)

    def clean(obj: Any) -> Any:
        if isinstance(obj, float) and obj != obj:
            return None
        if isinstance(obj, dict):
            return {str(k): clean(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [clean(v) for v in obj]
        return obj

    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(clean(payload), indent=2) + "\n")
    tmp.replace(path)


def ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``, NaN when undefined."""
    if denominator is None or numerator is None or denominator <= 0 or numerator != numerator:
        return float("nan")
    return numerator / denominator
