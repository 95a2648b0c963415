"""Native (C++) time loops of the recurrent scans, compiled on first use.

:mod:`mfm.model.recurrent` runs its scans' time loops either in Python (every step a few
whole-tensor PyTorch operations) or with the kernels of ``scan.cpp`` beside this file:
the same arithmetic, each step's gate nonlinearities and state update fused into one pass
over its rows, the loop in C++, and the independent cells of a scan split into groups
that run their whole loops on separate threads (see the comment at the top of
``scan.cpp``).

Building. The first scan of a process that wants the kernels compiles ``scan.cpp``
against the installed PyTorch with the system C++ compiler (``$CXX``, else ``c++`` or
``g++``; about 10-20 s, once per machine and PyTorch version) into a cache folder
(``$MFM_CACHE_DIR``, else ``$XDG_CACHE_HOME/mfm`` or ``~/.cache/mfm``), and loads it as a
PyTorch operator library (``torch.ops.mfm_scan``). Processes that start together (DDP
ranks) wait for one build under a file lock. Where no compiler is found, or the build
or the load fails, mfm warns once and the Python loops run instead: the same results,
slower.

Switches: ``model.native_kernels: false`` in a config, or ``MFM_NATIVE=0`` in the
environment, keeps the Python loops.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import warnings
from functools import lru_cache
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("scan.cpp")
_FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-fno-math-errno",
          "-fno-trapping-math")
# PyTorch's OpenMP backend runs ``at::parallel_for`` through ``#pragma omp`` in its headers:
# without -fopenmp the kernels' cell groups would run one after the other. The library
# then needs libgomp, which the process already holds (PyTorch loaded it), so both share
# one OpenMP runtime and one pool of threads. Compilers without OpenMP build without it.
_OPENMP = "-fopenmp"


def disabled_by_environment() -> bool:
    """Whether ``MFM_NATIVE`` is set to 0, no, off or false."""
    return os.environ.get("MFM_NATIVE", "").strip().lower() in ("0", "no", "off", "false")


def cache_dir() -> Path:
    """The folder that holds built kernels."""
    root = os.environ.get("MFM_CACHE_DIR")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "mfm"


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and (path := shutil.which(name)):
            return path
    return None


def _cpu_signature() -> str:
    """What ``-march=native`` depends on: the CPU's model and flags."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return platform.processor()
    keep = [line for line in text.splitlines()
            if line.startswith(("flags", "model name", "Features", "CPU part"))]
    return "\n".join(sorted(set(keep)))


def _key(compiler: str) -> str:
    digest = hashlib.sha256()
    for part in (SOURCE.read_bytes(), torch.__version__.encode(), compiler.encode(),
                 " ".join((*_FLAGS, _OPENMP)).encode(), platform.machine().encode(),
                 sys.version.encode(), _cpu_signature().encode()):
        digest.update(part)
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def _build(compiler: str, target: Path) -> None:
    """Compile ``scan.cpp`` into ``target``, whose folder exists (atomically: a finished
    file or none)."""
    from torch.utils import cpp_extension  # imported only to build: it is slow to import

    lib = cpp_extension.library_paths()[0]
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    openmp = [_OPENMP] if "OpenMP" in torch.__config__.parallel_info() else []
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        out = Path(tmp) / target.name
        command = [compiler, *_FLAGS, f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
                   *[f"-I{p}" for p in cpp_extension.include_paths()], str(SOURCE),
                   "-o", str(out), f"-L{lib}", "-lc10", "-ltorch_cpu", f"-Wl,-rpath,{lib}"]
        done = subprocess.run(command[:1] + openmp + command[1:], capture_output=True,
                              text=True, check=False)
        if done.returncode != 0 and openmp:  # a compiler without OpenMP: cells in turn
            done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            lines = [line for line in done.stderr.splitlines() if "error" in line]
            detail = (lines or done.stderr.strip().splitlines() or ["no output"])[0]
            raise RuntimeError(f"{Path(compiler).name} exited {done.returncode}: {detail}")
        os.replace(out, target)


@lru_cache(maxsize=1)
def _load() -> str | None:
    """Build (when needed) and load the kernels; None on success, else why not."""
    if not hasattr(torch.ops, "mfm_scan") or not hasattr(torch.ops.mfm_scan, "lstm_forward"):
        compiler = _compiler()
        if compiler is None:
            return "no C++ compiler found (set CXX)"
        target = cache_dir() / "native" / _key(compiler) / "mfm_scan.so"
        try:
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                with open(target.parent / "build.lock", "w") as lock:
                    fcntl.flock(lock, fcntl.LOCK_EX)
                    if not target.exists():
                        print("mfm: compiling the native recurrent kernels (once per machine, "
                              "about 15 s) ...", file=sys.stderr, flush=True)
                        _build(compiler, target)
            torch.ops.load_library(str(target))
        except (OSError, RuntimeError, subprocess.SubprocessError) as error:
            return f"{error}"
    return None


def available() -> bool:
    """Whether the native kernels can run in this process (builds them on first call).

    False when ``MFM_NATIVE=0`` or when they cannot be built or loaded; the latter
    warns once, naming the reason.
    """
    if disabled_by_environment():
        return False
    problem = _load()
    if problem is not None:
        _warn(problem)
        return False
    return True


@lru_cache(maxsize=1)
def _warn(problem: str) -> None:
    warnings.warn(f"mfm: native recurrent kernels unavailable ({problem}); using the Python "
                  "loops (same results, slower). Set MFM_NATIVE=0 to silence this.",
                  RuntimeWarning, stacklevel=3)


def usable(*tensors: torch.Tensor) -> bool:
    """Whether these tensors can go through the native kernels: CPU, float32 or float64,
    and the kernels available."""
    return (all(t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64)
                for t in tensors) and available())
