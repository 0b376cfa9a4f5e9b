"""The compiled CPU kernel for one inner step of Q's fit (``club_kernel.c``), built on first use.

Why a C kernel: on a CPU the torch form of the step spends about half its time streaming
[64, rows] intermediates through memory and dispatching ~25 small kernels; the fused kernel
keeps a block of rows in registers through the whole step and measured ~2x faster on a
default-dataset fit (``benchmarks/club_fit.py``), for the same numbers to float rounding.

Why compiled here rather than shipped as a binary: the shapes are compile-time constants (the
loops unroll and activations stay in registers) and ``-march=native`` uses the vector width of
the CPU the worker runs on. A build takes about a second; the library is cached under
``<cache_dir>/native/`` keyed by the source, the shape, the compiler and the CPU, so a second
process (or run) only loads it. Where no C compiler is found, ``kernel="auto"`` falls back to
the torch form with one warning; ``kernel="native"`` refuses to.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from sea_dist.config.checks import CLUB_KERNEL_CHOICES as KERNEL_CHOICES
from sea_dist.local_cache import cache_dir

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("club_kernel.c")
_FLAG_SETS = (["-O3", "-march=native"], ["-O3"])  # the second for compilers without -march=native
BUILD_TIMEOUT_S = 300.0  # a compiler that hangs must not hang the worker: fall back instead


class NativeKernelUnavailable(RuntimeError):
    """The C kernel could not be built or loaded here (no compiler, or it failed)."""


@dataclass(frozen=True)
class ClubKernel:
    """A loaded kernel for one Q shape: ``step`` computes one inner step's gradient."""

    step: Callable[..., float]  # club_step of club_kernel.c (ctypes; releases the GIL)
    lanes: int  # the row stride of the inputs must be a multiple of this
    scratch_bytes: int


def _compiler() -> list[str] | None:
    """The C compiler's command line: ``$CC`` (may carry flags, ``"ccache gcc"``) or ``cc``."""
    cc = shlex.split(os.environ.get("CC", "")) or ["cc"]
    return cc if shutil.which(cc[0]) else None


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(cmd, -1, "", f"timed out after {BUILD_TIMEOUT_S:.0f} s")


def _cpu_fingerprint() -> str:
    """What ``-march=native`` depends on: a library built for one CPU may not run on another
    sharing the cache (a home directory on NFS, a node image copied around)."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [ln for ln in f if ln.startswith(("model name", "flags", "Features", "CPU part"))]
        return "".join(sorted(set(lines)))
    except OSError:
        import platform

        return platform.machine() + platform.processor()


def _build(cc: list[str], defines: list[str], target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for flags in _FLAG_SETS:
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        cmd = [*cc, *flags, "-shared", "-fPIC", *defines, "-o", tmp, str(SOURCE)]
        done = _run(cmd)
        if done.returncode == 0:
            os.replace(tmp, target)  # atomic: workers building the same library at once are fine
            return
        os.unlink(tmp)
        errors.append(f"$ {shlex.join(cmd)}\n{done.stderr.strip()}")
    raise NativeKernelUnavailable("building the CLUB kernel failed:\n" + "\n".join(errors))


@functools.lru_cache(maxsize=None)  # one build or dlopen per process and shape, failures included
def _load_or_why(d_x: int, hidden: int, d_y: int) -> ClubKernel | str:
    try:
        return _load(d_x, hidden, d_y)
    except (NativeKernelUnavailable, OSError, AttributeError) as err:
        return str(err)


def _load(d_x: int, hidden: int, d_y: int) -> ClubKernel:
    cc = _compiler()
    if cc is None:
        raise NativeKernelUnavailable("no C compiler found (set CC, or install gcc/clang)")
    version = _run([*cc, "--version"]).stdout
    defines = [f"-DDX={d_x}", f"-DHID={hidden}", f"-DDY={d_y}"]
    key = hashlib.sha256(
        "\0".join([SOURCE.read_text(), repr(_FLAG_SETS), " ".join(defines), version, _cpu_fingerprint()]).encode()
    ).hexdigest()[:16]
    target = Path(cache_dir()) / "native" / f"club_kernel_{d_x}_{hidden}_{d_y}_{key}.so"
    if not target.exists():
        log.info("compiling the CLUB kernel for Q %d -> %d -> %d into %s", d_x, hidden, d_y, target)
        _build(cc, defines, target)
    lib = ctypes.CDLL(str(target))
    lib.club_step.restype = ctypes.c_double
    lib.club_step.argtypes = [
        ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_long,  # x_t, y_t, weight, stride
        ctypes.c_void_p, ctypes.c_void_p, ctypes.c_float, ctypes.c_int, ctypes.c_void_p,  # params..scratch
    ]
    lib.club_lanes.restype = lib.club_scratch_bytes.restype = ctypes.c_long
    return ClubKernel(lib.club_step, int(lib.club_lanes()), int(lib.club_scratch_bytes()))


def club_kernel(d_x: int, hidden: int, d_y: int, kernel: str = "auto") -> ClubKernel | None:
    """The compiled kernel for this Q shape, or None where the torch form is to be used.

    ``kernel``: ``auto`` (the C kernel when it builds, else torch with one warning per shape),
    ``native`` (the C kernel or :class:`NativeKernelUnavailable`), ``torch`` (always None).
    """
    if kernel not in KERNEL_CHOICES:
        raise ValueError(f"CLUB kernel must be one of {', '.join(KERNEL_CHOICES)}, got {kernel!r}")
    if kernel == "torch":
        return None
    if d_x % 8 or d_y % 2:
        loaded = f"the kernel needs an input width divisible by 8 and an even output width, got {d_x} and {d_y}"
    else:
        loaded = _load_or_why(d_x, hidden, d_y)
    if isinstance(loaded, ClubKernel):
        return loaded
    if kernel == "native":
        raise NativeKernelUnavailable(loaded)
    _warn_once(d_x, hidden, d_y, loaded)
    return None


@functools.lru_cache(maxsize=None)
def _warn_once(d_x: int, hidden: int, d_y: int, why: str) -> None:
    log.warning("CLUB kernel for Q %d -> %d -> %d unavailable, fitting Q with torch ops: %s", d_x, hidden, d_y, why)
